"""End to end: Orthanc (the PACS) routes real studies to the node; results come back into the same study."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Job, Series, Study
from tests.e2e.test_reliability import results_in, send_series, start_node
from tests.support.net import free_port, holds_for, wait_for
from tests.support.peers import NodeProcess, Orthanc, dciodvfy, sr_validator, storescu

pytestmark = pytest.mark.e2e

MNI_BRAIN_ML = 1886.539  # voxels > 0 of the MNI152 2009a template, 1 mm^3 each (../shared/data/README.md)


# storescu option proposing each folder's compressed transfer syntax, so that Orthanc gets the files as they are
PROPOSE = {"mr_knix_loc_jpeg_lossless": ("-xs",), "mr_knee_2series_j2k_lossy": ("-xw",)}


def upload_and_route(orthanc: Orthanc, folder: Path) -> tuple[str, str, float]:
    """DCMTK storescu into Orthanc, then ask Orthanc to send the study to the node.

    Returns (StudyInstanceUID, Orthanc study id, time the routing request returned).
    """
    result = storescu(orthanc.dicom_port, folder, called=orthanc.aet, extra_args=PROPOSE.get(folder.name, ()))
    assert result.returncode == 0, result.stderr
    first = next(p for p in sorted(folder.rglob("*")) if p.is_file())
    study_uid = str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)
    study_id = orthanc.study_id(study_uid)
    assert study_id is not None
    answer = orthanc.request("POST", "/modalities/NODE/store", {"Resources": [study_id], "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0, answer
    return study_uid, study_id, time.monotonic()


def node_db(node: NodeProcess) -> Session:
    return Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}"))


def study_row(node: NodeProcess, study_uid: str) -> dict[str, Any] | None:
    with node_db(node) as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            return None
        return {"state": study.state.value, "reason": study.state_reason,
                "series": {s.description: s.route_reason for s in study.series},
                "jobs": [(j.status.value, j.reason) for j in session.scalars(
                    select(Job).join(Job.series).where(Series.study_id == study.id))]}


def audit_rows(node: NodeProcess, study_uid: str) -> list[tuple[str, dict[str, Any]]]:
    with node_db(node) as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.study_uid == study_uid)
                               .order_by(AuditRecord.id))
        return [(r.event, json.loads(r.detail)) for r in rows]


def result_series(orthanc: Orthanc, study_id: str) -> dict[str, list[str]]:
    """Modality -> instance ids of the SEG and SR series now in the study."""
    found: dict[str, list[str]] = {}
    for series in orthanc.series_of(study_id):
        modality = series["MainDicomTags"].get("Modality")
        if modality in ("SEG", "SR"):
            found.setdefault(modality, []).extend(series["Instances"])
    return found


def delivered(orthanc: Orthanc, study_uid: str) -> list[str]:
    """The modality of every SEG or SR C-STORE Orthanc received for the study, duplicates included."""
    return sorted(m for m, _ in orthanc.receipts(study_uid).elements() if m in ("SEG", "SR"))


def test_mni_brain_gets_seg_and_sr_in_the_same_study(orthanc: Orthanc, node: NodeProcess, shared_data: Path,
                                                     tmp_path: Path) -> None:
    study_uid, study_id, routed_at = upload_and_route(orthanc, shared_data / "mr_t1_brain_mni152")
    results = wait_for(lambda: (r := result_series(orthanc, study_id)).keys() == {"SEG", "SR"} and r,
                       timeout=120, msg="one SEG and one SR in Orthanc's study")
    print(f"\nrouting request -> SEG+SR stored in Orthanc: {time.monotonic() - routed_at:.1f} s")
    assert len(results["SEG"]) == 1 and len(results["SR"]) == 1
    assert holds_for(lambda: delivered(orthanc, study_uid) == ["SEG", "SR"], seconds=3)  # each received once
    seg_path = orthanc.download(results["SEG"][0], tmp_path / "seg.dcm")
    sr_path = orthanc.download(results["SR"][0], tmp_path / "sr.dcm")
    for path in (seg_path, sr_path):
        errors, _ = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
    sr_errors, _ = sr_validator(sr_path)
    assert sr_errors == [], sr_errors
    seg, sr = dcmread(seg_path), dcmread(sr_path)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study_uid

    sources = {}
    for path in (shared_data / "mr_t1_brain_mni152").iterdir():
        ds = dcmread(path, stop_before_pixels=True)
        sources[ds.SOPInstanceUID] = tuple(round(float(v), 3) for v in ds.ImagePositionPatient)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = tuple(round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert sources[referenced] == position

    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    voxel_mm3 = float(np.prod([float(v) for v in measures.PixelSpacing])) * float(measures.SpacingBetweenSlices)
    seg_ml = int(np.count_nonzero(seg.pixel_array)) * voxel_mm3 / 1000
    print(f"SEG brain volume {seg_ml:.1f} ml (template {MNI_BRAIN_ML:.1f} ml)")
    assert seg_ml == pytest.approx(MNI_BRAIN_ML, rel=0.05)
    (value,) = [i for i in _walk(sr.ContentSequence) if i.ValueType == "NUM"]
    assert float(value.MeasuredValueSequence[0].NumericValue) == pytest.approx(seg_ml, abs=1e-3)

    row = study_row(node, study_uid)
    assert row is not None and row["state"] == "routed"
    assert row["jobs"][0][0] == "succeeded"
    events = [e for e, _ in audit_rows(node, study_uid)]
    for expected in ("instances_received", "study_received", "job_queued", "job_started", "result_sent",
                     "job_succeeded"):
        assert expected in events


def _walk(items):  # type: ignore[no-untyped-def]
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def test_localizer_with_several_orientations_is_skipped(orthanc: Orthanc, node: NodeProcess,
                                                        shared_data: Path) -> None:
    study_uid, study_id, _ = upload_and_route(orthanc, shared_data / "mr_knix_loc_jpeg_lossless")
    row = wait_for(lambda: (r := study_row(node, study_uid)) and r["state"] != "receiving" and r,
                   timeout=60, msg="Knix study judged complete")
    assert row["state"] == "no_match"
    assert "several orientations" in next(iter(row["series"].values()))
    skipped = [d for e, d in audit_rows(node, study_uid) if e == "series_skipped"]
    assert len(skipped) == 1 and "several orientations" in skipped[0]["reason"]
    assert result_series(orthanc, study_id) == {}
    assert node.process is not None and node.process.poll() is None


@pytest.mark.parametrize("folder", ["mr_knee_2series_j2k_lossy", "mr_brainix_2series_uncompressed"])
def test_study_no_rule_matches_creates_no_job(orthanc: Orthanc, node: NodeProcess, shared_data: Path,
                                              folder: str) -> None:
    study_uid, study_id, _ = upload_and_route(orthanc, shared_data / folder)
    row = wait_for(lambda: (r := study_row(node, study_uid)) and r["state"] != "receiving" and r,
                   timeout=60, msg="study judged complete")
    assert row["state"] == "no_match" and row["jobs"] == []
    assert all(reason.startswith("no rule matched") for reason in row["series"].values()), row
    (not_routed,) = [d for e, d in audit_rows(node, study_uid) if e == "study_not_routed"]
    assert "no rule matched" in not_routed["reason"]
    assert result_series(orthanc, study_id) == {}


def test_health_and_metrics_of_the_running_node(orthanc: Orthanc, tmp_path: Path) -> None:
    """The node's own state, made here: one study routed to a job that succeeds, one that no rule matches."""
    admin_port = free_port()
    node = start_node(tmp_path / "node", orthanc, DICOMNODE_ADMIN_PORT=str(admin_port))
    try:
        routed = send_series(node, tmp_path / "routed")
        send_series(node, tmp_path / "unmatched", description="LOCALIZER")
        wait_for(lambda: results_in(orthanc, routed) == {"SEG": 1, "SR": 1}, timeout=90, msg="SEG and SR in the PACS")
        base = f"http://127.0.0.1:{admin_port}"
        with urllib.request.urlopen(base + "/healthz", timeout=10) as rsp:
            assert json.loads(rsp.read())["status"] == "ok"

        def metrics() -> str:
            with urllib.request.urlopen(base + "/metrics", timeout=10) as rsp:
                return str(rsp.read().decode())

        wanted = {'dicomnode_jobs{status="succeeded"}': 1.0, 'dicomnode_studies{state="routed"}': 1.0,
                  'dicomnode_studies{state="no_match"}': 1.0}

        def counted() -> dict[str, float] | None:
            samples = _samples(metrics())
            return samples if all(samples.get(k) == v for k, v in wanted.items()) else None

        samples = wait_for(counted, timeout=30, msg="metrics count the succeeded job and both studies")
        assert samples.get('dicomnode_jobs{status="dead_letter"}', 0.0) == 0.0
    finally:
        node.stop()


def _samples(text: str) -> dict[str, float]:
    """Prometheus text exposition: sample name with labels -> value."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def test_sigterm_stops_the_node_cleanly(orthanc: Orthanc, tmp_path: Path) -> None:
    node = start_node(tmp_path / "node", orthanc)
    assert node.stop() == 0
    log = node.log_path.read_text()
    assert "node stopped" in log and "Traceback" not in log
    with node_db(node) as session:
        last = session.scalars(select(AuditRecord).order_by(AuditRecord.id.desc())).first()
    assert last is not None and last.event == "application_stop"
