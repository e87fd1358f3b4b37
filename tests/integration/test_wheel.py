"""The installed wheel is the product: build it, install it into a fresh venv outside the checkout, and run
the node from another folder: ``--help``, ``init``, ``db upgrade``, ``models verify`` on the shipped demo
models, and a one-round, two-site federation on loopback.

The install follows scripts/setup.sh: torch 2.13.0 (the CPU wheel) first, then the wheel with the ``fl``
and ``onnx`` extras, then flwr 1.42.0 without its pins. The node's commands run the venv's ``dicomnode``
script with the working directory in tmp and an environment without PYTHONPATH, so a file the wheel lacks
(alembic's scripts, the example configuration, a module of the checkout such as ``training/``) fails here.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from tests.support.children import dies_with_us
from tests.support.net import free_port, port_open, wait_for
from tests.support.peers import REPO
from training.sites import SITES, write_site

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(1500)]  # a cold pip cache downloads torch's neighbours

DEMO_MODELS = ("cxr-demo", "ct-nodule-demo")
INSTALL = (  # scripts/setup.sh's order: the CPU torch wheel first, flwr without its pins last
    ("torch==2.13.0",),
    ("{wheel}[fl,onnx]",),
    ("--no-deps", "flwr==1.42.0"),
)


@dataclass(frozen=True)
class Installed:
    """A venv holding only the wheel and its extras, and a working folder outside the checkout."""

    venv: Path
    home: Path

    def env(self, cwd: Path, **more: str) -> dict[str, str]:
        """No PYTHONPATH; HOME, data and models under ``cwd``; ``more`` DICOMNODE_* settings."""
        return {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8",
                "DICOMNODE_DATA_DIR": str(cwd / "data"), "DICOMNODE_MODELS_DIR": str(cwd / "models"),
                **{f"DICOMNODE_{k.upper()}": v for k, v in more.items()}}

    def run(self, cwd: Path, *args: str, timeout: float = 180, **more: str) -> subprocess.CompletedProcess[str]:
        """``dicomnode ARGS`` from the venv, in ``cwd`` (see :meth:`env`)."""
        return subprocess.run([str(self.venv / "bin" / "dicomnode"), *args], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, check=False, env=self.env(cwd, **more))


def _checked(command: list[str], timeout: float) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(command)}\n{(done.stdout + done.stderr)[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    _checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)], 300)
    (wheel,) = (root / "dist").glob("dicomnode-*.whl")
    venv.EnvBuilder(with_pip=False).create(root / "venv")  # the checkout's pip installs into it (--python)
    python = root / "venv" / "bin" / "python"
    for args in INSTALL:
        _checked([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                  *(a.format(wheel=wheel) for a in args)], 1200)
    (root / "home").mkdir()
    return Installed(root / "venv", root / "home")


@pytest.fixture
def workdir(installed: Installed, tmp_path: Path) -> Path:
    """An empty folder outside the checkout, with the shipped demo models copied into ``models/``."""
    for model in DEMO_MODELS:
        shutil.copytree(REPO / "models" / model, tmp_path / "models" / model)
    return tmp_path


def test_the_package_and_its_data_come_from_the_venv(installed: Installed, workdir: Path) -> None:
    probe = ("import importlib.util, dicomnode.resources as r; "
             "print(r.alembic_dir()); print(r.example_config()); print(importlib.util.find_spec('training'))")
    done = subprocess.run([str(installed.venv / "bin" / "python"), "-c", probe], cwd=workdir, capture_output=True,
                          text=True, timeout=60, check=False, env=installed.env(workdir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    package = next((installed.venv / "lib").glob("python3*/site-packages/dicomnode"))
    assert lines == [str(package / "_data" / "alembic"), str(package / "_data" / "dicomnode.example.toml"), "None"]


def test_help(installed: Installed, workdir: Path) -> None:
    done = installed.run(workdir, "--help")
    assert done.returncode == 0, done.stderr
    assert all(command in done.stdout for command in ("init", "db", "models", "fl", "serve")), done.stdout


def _head(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(version)


def test_init_writes_the_example_and_db_upgrade_brings_a_new_database_to_head(installed: Installed,
                                                                               workdir: Path) -> None:
    head = ScriptDirectory(str(REPO / "alembic")).get_current_head()
    done = installed.run(workdir, "init", "dicomnode.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote dicomnode.toml; database ready at {workdir / 'data' / 'dicomnode.db'}" in done.stdout
    assert (workdir / "dicomnode.toml").read_text() == (REPO / "config" / "dicomnode.example.toml").read_text()
    assert _head(workdir / "data" / "dicomnode.db") == head

    (workdir / "data" / "dicomnode.db").unlink()
    done = installed.run(workdir, "db", "upgrade", config=str(workdir / "dicomnode.toml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _head(workdir / "data" / "dicomnode.db") == head


def test_models_verify_runs_the_shipped_demo_models(installed: Installed, workdir: Path) -> None:
    done = installed.run(workdir, "models", "verify", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for model in DEMO_MODELS:
        assert any(line.startswith(model) and "checksums ok" in line and "synthetic run ok" in line
                   for line in done.stdout.splitlines()), done.stdout


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at the end is killed (a Flower server waits for ever)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_one_round_two_site_federation(installed: Installed, workdir: Path,
                                       processes: list[subprocess.Popen[bytes]]) -> None:
    model_dir = workdir / "models" / "ct-nodule-demo"
    sites = SITES[:2]
    for site in sites:
        write_site(site, workdir / site.name, cases=3, shape=(24, 24, 24))

    def fl(log: str, *args: str) -> subprocess.Popen[bytes]:
        with (workdir / log).open("wb") as out:
            process = subprocess.Popen([str(installed.venv / "bin" / "dicomnode"), "fl", *args], cwd=workdir,
                                       env=installed.env(workdir), stdout=out, stderr=subprocess.STDOUT,
                                       **dies_with_us())
        processes.append(process)
        return process

    port = free_port()
    server = fl("server.log", "server", "--address", f"127.0.0.1:{port}", "--model-dir", str(model_dir),
                "--rounds", "1", "--sites", str(len(sites)))
    wait_for(lambda: port_open(port) or server.poll() is not None, timeout=240, msg="Flower server listening")
    for site in sites:
        fl(f"{site.name}.log", "client", "--address", f"127.0.0.1:{port}", "--name", site.name,
           "--data", str(workdir / site.name), "--model-dir", str(model_dir), "--steps", "1", "--patch", "16",
           "--seed", str(site.seed))
    wait_for(lambda: all(p.poll() is not None for p in processes) or any(p.poll() for p in processes),
             timeout=300, msg="the Flower server and its sites to finish")
    logs = "\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-2000:]
                     for log in sorted(workdir.glob("*.log")))
    assert [p.returncode for p in processes] == [0] * (1 + len(sites)), logs

    (candidate_json,) = model_dir.glob("candidates/*/candidate.json")
    assert f"candidate {candidate_json.parent.name} of ct-nodule-demo 1.1.0:" in (workdir / "server.log").read_text()
    candidate = json.loads(candidate_json.read_text())
    assert [sorted(r["sites"]) for r in candidate["rounds"]] == [[s.name for s in sites]]
    assert (candidate_json.parent / "model.onnx").is_file()
