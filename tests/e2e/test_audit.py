"""The audit trail end to end: the event sequence, ATNA delivery after an outage, and no PHI in the logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.audit.models import AuditRecord
from tests.e2e.test_reliability import results_in, start_node
from tests.support.audit_schema import check, codes
from tests.support.net import free_port, wait_for
from tests.support.peers import NodeProcess, Orthanc, storescu
from tests.support.synthetic import make_series, write_series
from tests.support.syslog import SyslogReceiver

pytestmark = pytest.mark.e2e

PATIENT_NAME = "QUIXOTEZ^ZEBEDIAH^XAVERIUS"
PATIENT_ID = "PID-ZQ-90417-ATNA"


def trail(node: NodeProcess) -> list[AuditRecord]:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))


def test_audit_sequence_atna_after_outage_and_no_phi_in_logs(orthanc: Orthanc, tmp_path: Path) -> None:
    arr_port = free_port()  # the Audit Record Repository is down while the study comes in
    node = start_node(tmp_path / "node", orthanc, DICOMNODE_AUDIT_REPOSITORY=f"tcp://127.0.0.1:{arr_port}",
                      DICOMNODE_AUDIT_RETRY_SECONDS="0.5", DICOMNODE_AUDIT_POLL_SECONDS="0.2")
    receiver: SyslogReceiver | None = None
    try:
        series = make_series(n_slices=12, rows=16, columns=16, series_description="CRASHTEST T1",
                             patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
        write_series(series, tmp_path / "in")
        result = storescu(node.port, tmp_path / "in", called=node.ae_title)
        assert result.returncode == 0, result.stderr  # ingest did not wait for the repository
        study_uid = str(series[0].StudyInstanceUID)
        wait_for(lambda: results_in(orthanc, study_uid) == {"SEG": 1, "SR": 1}, timeout=90, msg="results")

        # the PACS logs a receipt before it answers; the node audits the send once the answer is in
        events = wait_for(lambda: "job_succeeded" in (e := [r.event for r in trail(node) if r.study_uid == study_uid])
                          and e, timeout=30, msg="the job's last audit row")
        expected = ["begin_transfer_in", "instances_received", "study_received", "job_queued", "job_started",
                    "instances_accessed", "begin_transfer_out", "result_sent", "job_succeeded"]
        assert [e for e in dict.fromkeys(events) if e in expected] == expected
        (receipts,) = [r for r in trail(node) if r.study_uid == study_uid and r.event == "instances_received"]
        assert json.loads(receipts.detail)["instances"] == 12 and events.count("result_sent") == 2

        receiver = SyslogReceiver(arr_port).start()  # the repository comes back
        wait_for(lambda: _has_study_events(receiver, study_uid), timeout=60, msg="ATNA messages after the outage")
    finally:
        node.stop()
        if receiver is not None:
            wait_for(lambda: any(codes(check(m.xml), "EventIdentification/EventTypeCode") == ["110121"]
                                 for m in receiver.messages), timeout=20, msg="application stop message")
            receiver.stop()

    ids = [codes(check(m.xml), "EventIdentification/EventID")[0] for m in receiver.messages]
    for event_id in ("110100", "110102", "110104", "110103"):
        assert event_id in ids
    assert any(PATIENT_NAME.encode() in m.xml and PATIENT_ID.encode() in m.xml for m in receiver.messages)

    # PHI: in the audit trail, never in the application log
    rows = trail(node)
    assert any(r.patient_name == PATIENT_NAME and r.patient_id == PATIENT_ID for r in rows)
    log = node.log_path.read_text()
    assert "job finished" in log  # the log did record the work
    assert PATIENT_NAME not in log and "QUIXOTEZ" not in log and PATIENT_ID not in log
    assert study_uid not in log  # UIDs only hashed
    assert json.loads(rows[0].detail) is not None


def _has_study_events(receiver: SyslogReceiver, study_uid: str) -> bool:
    found = {codes(check(m.xml), "EventIdentification/EventID")[0] for m in receiver.messages
             if study_uid.encode() in m.xml}
    return {"110102", "110104", "110103"} <= found
