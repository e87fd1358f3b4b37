"""The receiver's precompiled statements (dicomnode.db.Prepared) on SQLite and PostgreSQL: the same rows
and types as SQLAlchemy's own execution, and a DB-API error raised as SQLAlchemy's."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope
from dicomnode.jobs.models import Instance, Study
from dicomnode.jobs.status import StudyState
from dicomnode.store import index
from dicomnode.store.index import InstanceMeta, lookup, record_instance

BASE = InstanceMeta(study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.0",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax_uid="1.2.840.10008.1.2.1",
                    modality="MR", series_number=3, series_description="T1", patient_id="P1", patient_name="DOE^JANE")


def _record(sessions: sessionmaker[Session], meta: InstanceMeta, sha: str = "a" * 64) -> bool:
    with session_scope(sessions) as session:
        return record_instance(session, meta, path=f"/spool/{meta.sop_instance_uid}", sha256=sha, size=7,
                               calling_ae="PACS")


def test_instances_recorded_through_precompiled_statements_read_back_as_orm_rows(
    any_sessions: sessionmaker[Session],
) -> None:
    assert _record(any_sessions, BASE)  # the study's first instance: the ORM path
    before = dt.datetime.now(dt.UTC)
    second = dataclasses.replace(BASE, sop_instance_uid="1.2.3.4.1")
    assert _record(any_sessions, second)  # study and series known: the precompiled path
    assert not _record(any_sessions, second)  # unchanged re-send: found by the precompiled lookup
    with any_sessions() as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == "1.2.3.4.1")).one()
        study = session.scalars(select(Study)).one()
        known = lookup(session, second)
    assert (row.path, row.size, row.sha256, row.calling_ae) == ("/spool/1.2.3.4.1", 7, "a" * 64, "PACS")
    received = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=dt.UTC)
    assert before - dt.timedelta(seconds=1) <= received <= dt.datetime.now(dt.UTC)
    assert study.state is StudyState.RECEIVING and study.last_received_at is not None
    assert known.instance is not None and known.instance[1:] == ("a" * 64, BASE.series_uid, BASE.study_uid)
    assert known.study is not None and known.study[1] == "P1"


def test_a_database_error_in_a_precompiled_statement_is_sqlalchemys(any_sessions: sessionmaker[Session]) -> None:
    assert _record(any_sessions, BASE)
    with pytest.raises(IntegrityError), session_scope(any_sessions) as session:  # the UID is unique
        index._INSERT_INSTANCE.run(session.connection(), {
            "sop_instance_uid": BASE.sop_instance_uid, "series_id": lookup(session, BASE).series[0],  # type: ignore[index]
            "sop_class_uid": "1.2", "transfer_syntax_uid": "1.2", "path": "/x", "size": 1, "sha256": "b" * 64,
            "calling_ae": "PACS", "received_at": dt.datetime.now(dt.UTC)})
    with any_sessions() as session:
        assert session.scalars(select(Instance.sha256)).all() == ["a" * 64]  # rolled back, nothing changed
