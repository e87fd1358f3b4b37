"""A model that cannot run is not routed: the node as a real process, DCMTK storescp as its PACS.

Beside a good model (the region classifier, DX) the models folder holds one model whose file fails its
SHA-256 and one whose file does not load. At start both are unavailable, with their reasons: their
studies get no job and no failure notice, and the study's status says why; ``/readyz`` is degraded (200)
with the reasons; the audit trail has one ``model_unavailable`` row per model; ``models list`` and
``status`` name them. The good model's study gets its results. Fixing the folder and restarting (restart
is the reload) brings the model back.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Job, Study
from tests.support.cli import run_cli
from tests.support.models import write_classifier, write_threshold_model
from tests.support.net import free_port, holds_for, wait_for
from tests.support.peers import NodeProcess, storescp, storescu
from tests.support.synthetic import make_radiograph, make_series, write_series

GARBAGE = b"not an ONNX model"


def models_folder(root: Path) -> Path:
    models = root / "models"
    write_classifier(models)
    broken = write_threshold_model(models, 40.0, model_id="bad-sha", rule="mr-broken", description_re="^BROKEN")
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes() + b"\0")
    garbage = write_threshold_model(models, 40.0, model_id="no-load", rule="mr-noload", description_re="^NOLOAD")
    (garbage / "model.onnx").write_bytes(GARBAGE)
    manifest = garbage / "manifest.toml"
    text = manifest.read_text()
    listed = next(line for line in text.splitlines() if line.startswith("sha256"))
    manifest.write_text(text.replace(listed, f'sha256 = "{hashlib.sha256(GARBAGE).hexdigest()}"'))
    return models


def node_env(root: Path, pacs_port: int) -> dict[str, str]:
    return {"DICOMNODE_PACS": f"STORESCP@127.0.0.1:{pacs_port}", "DICOMNODE_PEERS": "STORESCU@127.0.0.1:104",
            "DICOMNODE_MODELS_DIR": str(root / "models"), "DICOMNODE_STUDY_IDLE_SECONDS": "1",
            "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.3", "DICOMNODE_WORKER_POLL_SECONDS": "0.2",
            "DICOMNODE_MIN_FREE_DISK_MB": "1", "DICOMNODE_ADMIN_PORT": str(free_port()),
            "DICOMNODE_INFERENCE_THREADS": "1", "DICOMNODE_DEVICE": "cpu"}


def readyz(node: NodeProcess) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{node.env['DICOMNODE_ADMIN_PORT']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def answered(node: NodeProcess) -> tuple[int, dict[str, Any]] | None:
    """/readyz's status and body, once the admin port answers."""
    code, body = readyz(node)
    return (code, body) if code in (200, 503) else None


def wait_ready(node: NodeProcess) -> tuple[int, dict[str, Any]]:
    found = wait_for(lambda: answered(node), timeout=60, msg="/readyz")
    assert found is not None
    return found


def judged(node: NodeProcess, study_uid: str) -> tuple[str, str, list[str]]:
    """(state, reason, models of its jobs) once the study has been judged."""
    def done() -> tuple[str, str, list[str]] | None:
        found = study(node, study_uid)
        return found if found is not None and found[0] != "receiving" else None
    found = wait_for(done, timeout=60, msg="the study judged")
    assert found is not None
    return found


def send_mr(node: NodeProcess, folder: Path, description: str) -> str:
    series = make_series(n_slices=8, rows=16, columns=16, series_description=description)
    write_series(series, folder)
    assert storescu(node.port, folder, called=node.ae_title).returncode == 0
    return str(series[0].StudyInstanceUID)


def send_dx(node: NodeProcess, folder: Path) -> str:
    pixels = np.full((128, 128), 1000, dtype=np.uint16)
    pixels[48:80, 48:80] = 3000
    pixels[0, 0], pixels[-1, -1] = 0, 4095
    folder.mkdir(parents=True)
    ds = make_radiograph(pixels)
    ds.save_as(folder / "dx.dcm", enforce_file_format=True)
    assert storescu(node.port, folder, called=node.ae_title).returncode == 0
    return str(ds.StudyInstanceUID)


def received(pacs: Path, study_uid: str) -> list[str]:
    """The modality of each object the PACS received for the study."""
    found = [dcmread(p, stop_before_pixels=True) for p in pacs.iterdir() if p.is_file()]
    return sorted(str(ds.Modality) for ds in found if ds.StudyInstanceUID == study_uid)


def study(node: NodeProcess, study_uid: str) -> tuple[str, str, list[str]] | None:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        row = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if row is None:
            return None
        jobs = [j.model_id for j in session.scalars(select(Job)) if j.series.study_id == row.id]
        return row.state.value, row.state_reason, jobs


def unavailable_rows(node: NodeProcess) -> list[dict[str, Any]]:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == "model_unavailable")
                               .order_by(AuditRecord.id))
        return [{"outcome": r.outcome, **json.loads(r.detail)} for r in rows]


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env |= {"DICOMNODE_MODELS_DIR": node.env["DICOMNODE_MODELS_DIR"], "DICOMNODE_DATA_DIR": str(node.data_dir)}
    return run_cli(args, env)


def test_a_model_that_cannot_run_is_not_routed_and_comes_back_after_a_fix_and_a_restart(tmp_path: Path) -> None:
    models_folder(tmp_path)
    with storescp(tmp_path / "pacs") as pacs_port:
        node = NodeProcess(tmp_path / "node", env=node_env(tmp_path, pacs_port)).start()
        try:
            code, ready = wait_ready(node)
            assert code == 200 and ready["ready"] is True and ready["degraded"] is True, ready
            assert set(ready["unavailable"]) == {"bad-sha", "no-load"}
            assert ready["unavailable"]["bad-sha"].startswith("file model.onnx has SHA-256 ")
            assert "model bad-sha unavailable: file model.onnx has SHA-256" in ready["checks"]["models"]["detail"]
            rows = unavailable_rows(node)
            assert sorted(r["model"] for r in rows) == ["bad-sha", "no-load"]
            assert all(r["outcome"] == "serious_failure" for r in rows)

            good = send_dx(node, tmp_path / "dx")
            broken = send_mr(node, tmp_path / "broken", "BROKEN T1")
            unloadable = send_mr(node, tmp_path / "noload", "NOLOAD T1")
            wait_for(lambda: received(tmp_path / "pacs", good) == ["SEG", "SR"], timeout=90, msg="the good results")
            for uid, model in ((broken, "bad-sha"), (unloadable, "no-load")):
                state, reason, jobs = judged(node, uid)
                assert (state, jobs) == ("no_match", [])
                assert f"suspended: model {model} unavailable: " in reason, reason
            # no job, so no failure notice: nothing reaches the PACS for either study
            assert holds_for(lambda: received(tmp_path / "pacs", broken) == received(tmp_path / "pacs", unloadable)
                             == [], seconds=3)

            listed = cli(node, "models", "list")
            assert listed.returncode == 1 and "Traceback" not in listed.stderr
            (line,) = [ln for ln in listed.stdout.splitlines() if ln.startswith("bad-sha ")]
            assert "UNAVAILABLE (its rules are suspended): file model.onnx has SHA-256" in line
            status = cli(node, "status")
            assert "MODEL UNAVAILABLE (its rules are suspended): model bad-sha unavailable: file model.onnx" \
                in status.stdout, status.stdout + status.stderr
        finally:
            node.stop()

        write_threshold_model(tmp_path / "models", 40.0, model_id="bad-sha", rule="mr-broken",
                              description_re="^BROKEN")  # the folder fixed; restart is the reload
        node = NodeProcess(tmp_path / "node", env=node_env(tmp_path, pacs_port)).start()
        try:
            code, ready = wait_ready(node)
            assert code == 200 and set(ready["unavailable"]) == {"no-load"}
            again = send_mr(node, tmp_path / "again", "BROKEN T2")
            wait_for(lambda: received(tmp_path / "pacs", again) == ["SEG", "SR"], timeout=90, msg="its results")
        finally:
            node.stop()
