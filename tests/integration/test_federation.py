"""Federated rounds over loopback: a Flower server and three site clients as real ``dicomnode fl``
processes, each site with its own phantom distribution, three rounds of FedAvg.

Each client talks to the server through a recording TCP proxy: what the server receives is the weights
(in size: three rounds of the network's weights, plus little) and none of the DICOM or identifying data
each site holds. A candidate model comes out; it is not the model's version until promoted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.support.children import dies_with_us
from tests.support.net import free_port, port_open, wait_for
from tests.support.peers import REPO
from tests.support.proxy import recording_proxy
from tests.support.synthetic import make_series
from training.sites import SITES, write_site

IDENTIFIERS = ("FEDERATED^PATIENT", "PID-55501", "19470711", "ACC-7781")
ROUNDS = 3


def site_archive(folder: Path) -> list[str]:
    """The site also holds the DICOM its export came from; returns the identifying strings in it."""
    series = make_series(4, 8, 8, patient_name=IDENTIFIERS[0], patient_id=IDENTIFIERS[1])
    (folder / "dicom").mkdir()
    for n, ds in enumerate(series):
        ds.PatientBirthDate, ds.AccessionNumber = IDENTIFIERS[2], IDENTIFIERS[3]
        ds.save_as(folder / "dicom" / f"{n}.dcm", enforce_file_format=True)
    return [*IDENTIFIERS, *(str(ds.SOPInstanceUID) for ds in series), str(series[0].StudyInstanceUID)]


def fl(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``dicomnode fl ARGS`` as a process, its output going to ``log`` (a pipe could fill and stall it)."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dicomnode", "fl", *args], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, **dies_with_us())


def finish(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait until all have exited, or one has failed (the others are then stopped: a Flower server waits
    for its sites for ever)."""
    wait_for(lambda: all(p.poll() is not None for p in processes) or any(p.poll() for p in processes),
             timeout=timeout, msg="the Flower server and its sites to finish")
    for p in processes:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def test_three_sites_three_rounds_give_a_candidate_and_only_weights_travel(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "ct-nodule-demo"
    shutil.copytree(REPO / "models" / "ct-nodule-demo", model_dir)
    manifest_before = (model_dir / "manifest.toml").read_text()
    secrets: list[str] = []
    for site in SITES:
        write_site(site, tmp_path / site.name, cases=6, shape=(24, 24, 24))
        secrets += site_archive(tmp_path / site.name)

    port = free_port()
    server = fl(tmp_path / "server.log", "server", "--address", f"127.0.0.1:{port}", "--model-dir", str(model_dir),
                "--rounds", str(ROUNDS),
                "--sites", str(len(SITES)))
    clients = []
    with recording_proxy(port) as p1, recording_proxy(port) as p2, recording_proxy(port) as p3:
        wait_for(lambda: port_open(port) or server.poll() is not None, timeout=240, msg="Flower server listening")
        for site, proxy in zip(SITES, (p1, p2, p3), strict=True):
            clients.append(fl(tmp_path / f"{site.name}.log", "client", "--address", f"127.0.0.1:{proxy.port}",
                              "--name", site.name, "--data", str(tmp_path / site.name), "--model-dir", str(model_dir),
                              "--steps", "2", "--patch", "16", "--seed", str(site.seed)))
        finish([server, *clients], timeout=300)
        received = [p.received() for p in (p1, p2, p3)]
    logs = "\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-2000:]
                     for log in sorted(tmp_path.glob("*.log")))
    assert [p.returncode for p in (server, *clients)] == [0, 0, 0, 0], logs

    (candidate_json,) = model_dir.glob("candidates/*/candidate.json")
    candidate = json.loads(candidate_json.read_text())
    assert [r["round"] for r in candidate["rounds"]] == [1, 2, 3]
    assert all(sorted(r["sites"]) == [s.name for s in SITES] for r in candidate["rounds"])
    last = candidate["rounds"][-1]["sites"].values()
    assert candidate["passes_gate"] == all(s["dice_candidate"] >= s["dice_current"] for s in last)
    assert (candidate_json.parent / "model.onnx").is_file() and "not for clinical use" in candidate["notice"]
    assert (model_dir / "manifest.toml").read_text() == manifest_before  # a candidate, not a new version

    with np.load(candidate_json.parent / "weights.npz") as saved:
        weight_bytes = sum(saved[k].nbytes for k in saved.files)
    for site, data in zip(SITES, received, strict=True):
        assert ROUNDS * weight_bytes <= len(data) <= ROUNDS * weight_bytes * 1.05 + 256 * 1024, site.name
        assert site.name.encode() in data  # the recording sees the payload: the site's name in its metrics
        leaked = [s for s in (*secrets, "DICM", "1.2.840.10008") if s.encode() in data]
        assert leaked == [], f"{site.name} sent {leaked}"

    listing = subprocess.run([sys.executable, "-m", "dicomnode", "models", "list"], cwd=REPO, capture_output=True,
                             text=True, timeout=120, check=False,
                             env={"PATH": "/usr/bin:/bin", "DICOMNODE_MODELS_DIR": str(tmp_path / "models"),
                                  "DICOMNODE_DATA_DIR": str(tmp_path / "data")})
    assert f"candidate {candidate_json.parent.name} of ct-nodule-demo 1.1.0 (3 rounds" in listing.stdout, \
        listing.stdout + listing.stderr


