"""A job with no destination: a study a STOW-RS sender sent is left for that sender to fetch (a cloud
node), and any other study's job fails for good saying why, whatever other studies senders sent."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope
from dicomnode.errors import SendError
from dicomnode.jobs.models import Study, StudySender
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.send.deliver import deliver_results
from dicomnode.settings import Settings
from tests.support.spooled import spool
from tests.support.synthetic import make_series


def _job(study_uid: str) -> ClaimedJob:
    return ClaimedJob(id=1, series_id=1, series_uid="1.2.3", series_number=1, study_uid=study_uid, patient_id="P",
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
