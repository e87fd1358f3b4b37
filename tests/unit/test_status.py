from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import IllegalTransition
from dicomnode.jobs.status import ALLOWED_TRANSITIONS, FINAL_STATES, JobStatus, check_transition


def test_every_state_has_a_row() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(JobStatus)


@pytest.mark.parametrize(("current", "new"), [
    (JobStatus.QUEUED, JobStatus.RUNNING),
    (JobStatus.RUNNING, JobStatus.SUCCEEDED),
    (JobStatus.RUNNING, JobStatus.SKIPPED),
    (JobStatus.RUNNING, JobStatus.DEAD_LETTER),
    (JobStatus.RUNNING, JobStatus.QUEUED),
    (JobStatus.DEAD_LETTER, JobStatus.QUEUED),
])
def test_allowed(current: JobStatus, new: JobStatus) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(("current", "new"), [
    (JobStatus.QUEUED, JobStatus.SUCCEEDED),
    (JobStatus.SUCCEEDED, JobStatus.QUEUED),
    (JobStatus.SKIPPED, JobStatus.RUNNING),
    (JobStatus.QUEUED, JobStatus.QUEUED),
])
def test_refused(current: JobStatus, new: JobStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"from {current.value} to {new.value}"):
        check_transition(current, new)


def test_final_states_go_nowhere_but_an_operator_retry() -> None:
    for state in FINAL_STATES:
        assert ALLOWED_TRANSITIONS[state] <= {JobStatus.QUEUED}


def test_database_refuses_unknown_state(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        session.execute(text("INSERT INTO study (study_uid, state, state_reason, calling_ae, calling_address, "
                             "first_received_at, last_received_at) "
                             "VALUES ('1.2', 'receiving', '', 'X', '', '2026-01-01', '2026-01-01')"))
        session.execute(text("INSERT INTO series (study_id, series_uid, modality, description, route_reason, revision) "
                             "VALUES (1, '1.2.3', 'MR', '', '', 1)"))
        with pytest.raises(IntegrityError, match="CHECK constraint"):
            session.execute(text("INSERT INTO job (series_id, rule, model_id, model_version, revision, status, reason, "
                                 "attempts, created_at, updated_at) VALUES (1, 'r', 'm', '1', 1, 'exploded', '', 0, "
                                 "'2026-01-01', '2026-01-01')"))


def test_the_models_own_schema_checks_the_state_enums(tmp_path: Path) -> None:
    """The ORM model declares the same CHECK as the migrations: a schema made from it refuses an unknown state."""
    from sqlalchemy import create_engine

    from dicomnode.db import Base
    from dicomnode.jobs.models import Study

    engine = create_engine(f"sqlite:///{tmp_path / 'model.sqlite'}")
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session, session.begin():
            session.add(Study(study_uid="1.2.3", calling_ae="PACS"))
        with pytest.raises(IntegrityError, match="CHECK constraint"), engine.begin() as connection:
            connection.execute(text("UPDATE study SET state = 'lost'"))
    finally:
        engine.dispose()
