"""Delivery's bookkeeping: a job with no destination (a study a STOW-RS sender sent is left for that sender
to fetch, as on a cloud node; any other study's job fails for good saying why, whatever other studies
senders sent), and each destination's answer recorded as a delivery row and an audit row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.db import session_scope
from dicomnode.errors import SendError
from dicomnode.jobs.models import Delivery, Study, StudySender
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.send.deliver import _record, deliver_results
from dicomnode.send.scu import StoreOutcome
from dicomnode.settings import Settings
from tests.support.spooled import queue_job, spool
from tests.support.synthetic import make_series


def _job(study_uid: str, job_id: int = 1) -> ClaimedJob:
    return ClaimedJob(id=job_id, series_id=1, series_uid="1.2.3", series_number=1, study_uid=study_uid, patient_id="P",
                      patient_name="DOE^JANE", model_id="threshold-test", model_version="1", revision=1, attempts=1)


def test_no_destination_is_fine_only_for_a_study_a_sender_sent(settings: Settings,
                                                               sessions: sessionmaker[Session]) -> None:
    by_stow, by_c_store = make_series(n_slices=1, rows=8, columns=8), make_series(n_slices=1, rows=8, columns=8)
    spool(settings, sessions, by_stow)
    spool(settings, sessions, by_c_store)
    with session_scope(sessions) as session:
        study = session.scalars(select(Study).where(Study.study_uid == str(by_stow[0].StudyInstanceUID))).one()
        session.add(StudySender(study_id=study.id, user="edge-a"))
    deliver_results(settings, sessions, _job(str(by_stow[0].StudyInstanceUID)), [], (), "cloud")  # nothing raised
    with pytest.raises(SendError, match=r"^no destination for rule chest \(set DICOMNODE_PACS") as nowhere:
        deliver_results(settings, sessions, _job(str(by_c_store[0].StudyInstanceUID)), [], (), "chest")
    assert nowhere.value.retryable is False


def test_each_answer_is_a_delivery_row_and_an_audit_row_with_its_outcome(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """What a destination answered for each result: stored (0x0000) is a delivery "stored" and a
    result_sent success; 0xA700 or no answer is a delivery "failed" and a result_send_failed serious failure
    naming the status."""
    series = make_series(n_slices=1, rows=8, columns=8)
    spool(settings, sessions, series)
    answers = [StoreOutcome(tmp_path / f"{n}.dcm", "1.2.840.10008.5.1.4.1.1.66.4", f"1.2.3.{n}", status)
               for n, status in enumerate((0x0000, 0xA700, None))]
    job = _job(str(series[0].StudyInstanceUID), queue_job(sessions, str(series[0].SeriesInstanceUID)))
    _record(sessions, job, "PACS@127.0.0.1:104", "PACS", "127.0.0.1", answers)
    with sessions() as session:
        rows = {r.sop_instance_uid: (r.outcome, r.status) for r in session.scalars(select(Delivery))}
        audited = {json.loads(r.detail)["sop_instance_uid"]: (r.event, r.outcome, json.loads(r.detail)["status"])
                   for r in session.scalars(select(AuditRecord).where(AuditRecord.event.like("result_%")))}
    assert rows == {"1.2.3.0": ("stored", 0), "1.2.3.1": ("failed", 0xA700), "1.2.3.2": ("failed", None)}
    assert audited == {"1.2.3.0": ("result_sent", "success", "0x0000"),
                       "1.2.3.1": ("result_send_failed", "serious_failure", "0xA700"),
                       "1.2.3.2": ("result_send_failed", "serious_failure", "none")}
