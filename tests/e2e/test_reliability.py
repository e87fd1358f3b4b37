"""Nothing lost, nothing looping: PACS outage and retries, a refusing PACS, the failure notice.

A test-only ONNX threshold model (tests/support/models.py) keeps inference fast; everything else is the
real node, a real Orthanc and DCMTK.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Job, JobEvent
from tests.support.models import write_threshold_model
from tests.support.net import holds_for, wait_for
from tests.support.peers import NodeProcess, Orthanc, dciodvfy, sr_validator, storescu
from tests.support.synthetic import make_series, write_series

pytestmark = pytest.mark.e2e


def start_node(folder: Path, pacs: Orthanc, threshold: float = 40.0, **env: str) -> NodeProcess:
    models = write_threshold_model(folder / "models", threshold).parent
    return NodeProcess(folder, env={
        "DICOMNODE_PACS": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
        "DICOMNODE_PEERS": "STORESCU@127.0.0.1:104",
        "DICOMNODE_MODELS_DIR": str(models),
        "DICOMNODE_STUDY_IDLE_SECONDS": "1",
        "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.3",
        "DICOMNODE_WORKER_POLL_SECONDS": "0.2",
        "DICOMNODE_MIN_FREE_DISK_MB": "1",
        "DICOMNODE_RETRY_BASE_SECONDS": "1",
        "DICOMNODE_RETRY_MAX_ATTEMPTS": "8",
        **env,
    }).start()


def send_series(node: NodeProcess, folder: Path, description: str = "CRASHTEST T1") -> str:
    series = make_series(n_slices=8, rows=16, columns=16, series_description=description)
    write_series(series, folder)
    result = storescu(node.port, folder, called=node.ae_title)
    assert result.returncode == 0, result.stderr
    return str(series[0].StudyInstanceUID)


def jobs(node: NodeProcess) -> list[Job]:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        found = list(session.scalars(select(Job)))
        for job in found:
            _ = job.events  # load while the session is open
        return found


def job_events(node: NodeProcess) -> list[JobEvent]:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        return list(session.scalars(select(JobEvent).order_by(JobEvent.id)))


def audit(node: NodeProcess, event: str) -> list[dict[str, object]]:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == event).order_by(AuditRecord.id))
        return [json.loads(r.detail) for r in rows]


def results_in(orthanc: Orthanc, study_uid: str) -> dict[str, int]:
    """Deliveries per modality: every C-STORE the PACS received for the study, duplicates included
    (Orthanc overwrites by SOP Instance UID, so counting its stored instances would hide them)."""
    counts: dict[str, int] = {}
    for (modality, _), received in orthanc.receipts(study_uid).items():
        counts[modality] = counts.get(modality, 0) + received
    return counts


def delivered_once(orthanc: Orthanc, study_uid: str, expected: dict[str, int], timeout: float = 90) -> None:
    """Wait for the results, then hold: no second delivery may follow."""
    wait_for(lambda: results_in(orthanc, study_uid) == expected, timeout=timeout, msg=f"deliveries {expected}")
    assert holds_for(lambda: results_in(orthanc, study_uid) == expected, seconds=3), results_in(orthanc, study_uid)


@pytest.fixture
def own_orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc").start()
    yield pacs
    pacs.stop()


def test_pacs_outage_is_retried_until_delivered(own_orthanc: Orthanc, tmp_path: Path) -> None:
    node = start_node(tmp_path / "node", own_orthanc)
    try:
        own_orthanc.stop()  # the PACS goes down before the results are ready
        study_uid = send_series(node, tmp_path / "in")
        # three failures recorded, not merely three claims: a third attempt still sending when the PACS
        # comes back would succeed, and the schedule below would show two
        wait_for(lambda: len([e for e in job_events(node) if e.reason.startswith("attempt")]) >= 3, timeout=60,
                 msg="three failed attempts")
        own_orthanc.start()  # and comes back, on the same ports
        wait_for(lambda: [j.status.value for j in jobs(node)] == ["succeeded"], timeout=120,
                 msg="job delivered after the outage")
        delivered_once(own_orthanc, study_uid, {"SEG": 1, "SR": 1})
        schedule = [e.reason for e in job_events(node) if e.reason.startswith("attempt")]
        print("\nretry schedule observed:\n  " + "\n  ".join(schedule))
        assert len(schedule) >= 3 and all("retry in" in r for r in schedule)
        assert not audit(node, "result_send_failed")[0].get("kind")  # real send failures, not notices
    finally:
        node.stop()


def test_pacs_rejecting_the_node_dead_letters_without_looping(tmp_path: Path) -> None:
    strict = Orthanc(tmp_path / "strict", strict=True).start()  # the node's AE title is not one of its modalities
    node = start_node(tmp_path / "node", strict)
    try:
        send_series(node, tmp_path / "in")
        (job,) = wait_for(lambda: [j for j in jobs(node) if j.status.value == "dead_letter"], timeout=60,
                          msg="job in the dead letter")
        assert job.attempts == 1
        assert "rejected" in job.reason and job.reason.startswith("permanent failure")
        wait_for(lambda: [d for d in audit(node, "result_send_failed") if d.get("kind") == "failure_notice"],
                 timeout=30, msg="failure notice attempted (and refused too)")
        # no loop: through several retry periods (1 s base), nothing tries again
        assert holds_for(lambda: [j.attempts for j in jobs(node)] == [1], seconds=4)
    finally:
        node.stop()
        strict.stop()


def test_permanent_failure_sends_a_failure_notice(own_orthanc: Orthanc, tmp_path: Path) -> None:
    node = start_node(tmp_path / "node", own_orthanc, threshold=1e9)  # finds nothing: no SEG can be built
    try:
        study_uid = send_series(node, tmp_path / "in")
        wait_for(lambda: [j.status.value for j in jobs(node)] == ["dead_letter"], timeout=60, msg="dead letter")
        delivered_once(own_orthanc, study_uid, {"SR": 1}, timeout=30)  # the notice, once
        study_id = own_orthanc.study_id(study_uid)
        (series,) = own_orthanc.series_of(str(study_id))
        (instance,) = series["Instances"]
        content = own_orthanc.get(f"/instances/{instance}/tags?simplify")
        text = json.dumps(content)
        assert "AI result not available" in text and "found nothing to segment" in text
        notice = own_orthanc.download(instance, tmp_path / "notice.dcm")
        assert dciodvfy(notice)[0] == []
        assert sr_validator(notice)[0] == []
    finally:
        node.stop()
