"""Demonstration models are opt-in: the node as a real process with its own models folder (models/), DCMTK
storescp as its PACS.

- On its default configuration (no ``demo_models``), a chest radiograph and a chest CT, which the
  demonstration models' default rules would match, get no job, and nothing reaches the PACS.
- A configured rule that names a demonstration model is suspended while ``demo_models`` is off, and the
  study's status says why.
- With ``DICOMNODE_DEMO_MODELS=true`` the radiograph is routed to cxr-demo and comes back, and nothing the
  node sends says POSITIVE: the SR's series description reads "AI DEMO present: Opacity".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.inference.registry import DEMO_OFF
from dicomnode.jobs.models import Job, Study
from tests.support.net import holds_for, wait_for
from tests.support.peers import NodeProcess, dciodvfy, storescp, storescu
from tests.support.synthetic import make_ct_series, make_radiograph, write_series
from training.phantoms import TEST_SEED_BASE, ct_chest, radiograph

pytestmark = pytest.mark.e2e


def start(root: Path, pacs_port: int, **env: str) -> NodeProcess:
    """The node on its default configuration (its models folder, rules and switches), but for the PACS,
    the caller and the timing."""
    return NodeProcess(root, env={"DICOMNODE_PACS": f"STORESCP@127.0.0.1:{pacs_port}",
                                  "DICOMNODE_PEERS": "STORESCU@127.0.0.1:104", "DICOMNODE_STUDY_IDLE_SECONDS": "1",
                                  "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.3", "DICOMNODE_WORKER_POLL_SECONDS": "0.2",
                                  "DICOMNODE_MIN_FREE_DISK_MB": "1", "DICOMNODE_INFERENCE_THREADS": "1",
                                  **env}).start()


def chest_radiograph(folder: Path) -> str:
    image = radiograph(TEST_SEED_BASE + 900, finding=True).image  # an opacity: the demo says "present"
    pixels = np.rint((image - image.min()) / (image.max() - image.min()) * 4095).astype(np.uint16)
    folder.mkdir(parents=True)
    ds = make_radiograph(pixels)
    ds.save_as(folder / "dx.dcm", enforce_file_format=True)
    return str(ds.StudyInstanceUID)


def chest_ct(folder: Path, study_uid: str) -> str:
    phantom = ct_chest(TEST_SEED_BASE + 901, (64, 64, 64), 2.0, nodules=2)
    write_series(make_ct_series(phantom.hu, 2.0, study_uid=study_uid), folder)
    return study_uid


def send(node: NodeProcess, folder: Path) -> None:
    result = storescu(node.port, folder, called=node.ae_title)
    assert result.returncode == 0, result.stderr


def judged(node: NodeProcess, study_uid: str) -> tuple[str, str, list[str]]:
    """(state, reason, models of its jobs) once the study has been judged."""
    def row() -> tuple[str, str, list[str]] | None:
        with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
            study = session.scalar(select(Study).where(Study.study_uid == study_uid))
            if study is None or study.state.value == "receiving":
                return None
            return (study.state.value, study.state_reason,
                    [j.model_id for j in session.scalars(select(Job)) if j.series.study_id == study.id])
    found = wait_for(row, timeout=60, msg="the study judged")
    assert found is not None
    return found


def at_pacs(pacs: Path, study_uid: str) -> list[Dataset]:
    found = [dcmread(p) for p in sorted(pacs.iterdir()) if p.is_file()]
    return [ds for ds in found if ds.StudyInstanceUID == study_uid]


def test_the_default_configuration_routes_nothing_to_a_demonstration_model(tmp_path: Path) -> None:
    with storescp(tmp_path / "pacs") as pacs_port:
        node = start(tmp_path / "default", pacs_port)
        try:
            dx = chest_radiograph(tmp_path / "dx")
            ct = chest_ct(tmp_path / "ct", "2.25.26262626262626262626001")
            send(node, tmp_path / "dx")
            send(node, tmp_path / "ct")
            for uid in (dx, ct):
                state, reason, jobs = judged(node, uid)
                assert (state, jobs) == ("no_match", []), reason
                assert "demo" not in reason  # their default rules are not in force at all
            assert holds_for(lambda: at_pacs(tmp_path / "pacs", dx) == at_pacs(tmp_path / "pacs", ct) == [],
                             seconds=3)
        finally:
            node.stop()

        rule = [{"name": "site-cxr", "model": "cxr-demo", "match": {"Modality": "^DX$"}}]
        node = start(tmp_path / "explicit", pacs_port, DICOMNODE_RULES=json.dumps(rule))
        try:
            uid = chest_radiograph(tmp_path / "dx2")
            send(node, tmp_path / "dx2")
            state, reason, jobs = judged(node, uid)
            assert (state, jobs) == ("no_match", [])
            assert f"rule site-cxr suspended: model cxr-demo {DEMO_OFF}" in reason, reason
        finally:
            node.stop()


def test_with_the_switch_on_a_demonstration_model_runs_and_nothing_says_positive(tmp_path: Path) -> None:
    with storescp(tmp_path / "pacs") as pacs_port:
        node = start(tmp_path / "on", pacs_port, DICOMNODE_DEMO_MODELS="true")
        try:
            uid = chest_radiograph(tmp_path / "dx")
            send(node, tmp_path / "dx")
            state, _, jobs = judged(node, uid)
            assert (state, jobs) == ("routed", ["cxr-demo"])
            wait_for(lambda: len(at_pacs(tmp_path / "pacs", uid)) >= 2, timeout=90,
                     msg="the demonstration's SR and evidence map")
            found = at_pacs(tmp_path / "pacs", uid)
        finally:
            node.stop()
    (sr,) = [ds for ds in found if ds.Modality == "SR"]
    assert sr.SeriesDescription.startswith("AI DEMO present: Opacity"), sr.SeriesDescription
    for ds in found:
        texts = [str(e.value) for e in ds.iterall() if e.VR in ("LO", "LT", "ST", "UT", "SH")]
        assert not any("POSITIVE" in text.upper() for text in texts), ds.SeriesDescription
    for path in (tmp_path / "pacs").iterdir():
        assert dciodvfy(path)[0] == [], path.name
