"""Retention purge: files deleted after retention_days, each deletion audited, dead letters kept."""

from __future__ import annotations

import datetime as dt
import json
import shutil

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.audit.trail import verify
from dicomnode.db import session_scope, utcnow
from dicomnode.files import write_atomic
from dicomnode.inference.registry import load_manifests
from dicomnode.jobs.models import Instance, Job, Series, Study
from dicomnode.jobs.repository import claim, transition
from dicomnode.jobs.status import JobStatus, StudyState
from dicomnode.settings import Rule, Settings
from dicomnode.store.completion import InstalledModels, SeriesPlan, _apply
from dicomnode.store.index import InstanceMeta, record_instance
from dicomnode.store.retention import purge
from dicomnode.store.spool import spool_path
from tests.conftest import make_settings
from tests.support.peers import REPO


def _usable(headers: object) -> None:
    """Every series is usable here: these tests route by hand."""



def ingest_and_finish(settings: Settings, sessions: sessionmaker[Session], study: str, final: JobStatus) -> None:
    for i in range(3):
        sop = f"{study}.1.{i}"
        path = spool_path(settings.spool_dir, study, f"{study}.1", sop)
        sha = write_atomic(path, b"DICM" + sop.encode())
        meta = InstanceMeta(study_uid=study, series_uid=f"{study}.1", sop_instance_uid=sop,
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax_uid="1.2.840.10008.1.2.1",
                            modality="MR", series_number=1, series_description="T1", patient_id="P",
                            patient_name="DOE^JOHN")
        with session_scope(sessions) as session:
            record_instance(session, meta, path=str(path), sha256=sha, size=10, calling_ae="PACS")
    with session_scope(sessions) as session:
        row = session.scalars(select(Study).where(Study.study_uid == study)).one()
        series = session.scalars(select(Series).where(Series.study_id == row.id)).one()
        _apply(session, row, [SeriesPlan(series.id, [Rule(name="r", model="deepbet")], "matched")],
               InstalledModels({m.id: m.version for m in load_manifests(REPO / "models").values()}, _usable), 3)
    job = claim(sessions, "w", 60)
    assert job is not None
    results = settings.results_dir / f"job-{job.id}"
    write_atomic(results / "seg.dcm", b"result")
    with session_scope(sessions) as session:
        transition(session, job.id, JobStatus.RUNNING, final, "done", worker_id="w")


def age(sessions: sessionmaker[Session], days: float) -> None:
    past = utcnow() - dt.timedelta(days=days)
    with session_scope(sessions) as session:
        session.execute(update(Study).values(completed_at=past))
        session.execute(update(Job).values(updated_at=past))


def test_purge_after_retention(settings: Settings, sessions: sessionmaker[Session]) -> None:
    settings = make_settings(settings.data_dir, retention_days=7)
    ingest_and_finish(settings, sessions, "1.2.3", JobStatus.SUCCEEDED)
    ingest_and_finish(settings, sessions, "1.2.4", JobStatus.DEAD_LETTER)
    age(sessions, 3)
    assert purge(settings, sessions) == 0  # not yet
    age(sessions, 8)
    assert purge(settings, sessions) == 1  # the dead-lettered study is kept for the operator
    assert not (settings.spool_dir / "1.2.3").exists()
    assert not any(settings.results_dir.glob("job-1/*"))
    assert (settings.spool_dir / "1.2.4").is_dir()
    with sessions() as session:
        states = dict(session.execute(select(Study.study_uid, Study.state)).all())
        assert states == {"1.2.3": StudyState.PURGED, "1.2.4": StudyState.ROUTED}
        assert len(session.scalars(select(Instance)).all()) == 3
        (deleted,) = session.scalars(select(AuditRecord).where(AuditRecord.event == "study_deleted")).all()
        assert deleted.study_uid == "1.2.3" and deleted.patient_name == "DOE^JOHN"
    assert verify(sessions).ok
    assert purge(settings, sessions) == 0  # idempotent


def test_zero_retention_keeps_everything(settings: Settings, sessions: sessionmaker[Session]) -> None:
    ingest_and_finish(settings, sessions, "1.2.5", JobStatus.SUCCEEDED)
    age(sessions, 10000)
    assert purge(settings, sessions) == 0
    assert (settings.spool_dir / "1.2.5").is_dir()


def test_purge_audit_counts_instances_and_results(settings: Settings, sessions: sessionmaker[Session]) -> None:
    settings = make_settings(settings.data_dir, retention_days=7)
    ingest_and_finish(settings, sessions, "1.2.6", JobStatus.SUCCEEDED)
    age(sessions, 8)
    assert purge(settings, sessions) == 1
    with sessions() as session:
        (deleted,) = session.scalars(select(AuditRecord).where(AuditRecord.event == "study_deleted")).all()
    detail = json.loads(deleted.detail)
    assert detail["instances"] == 3 and detail["results"] == 1 and detail["reason"] == "retention policy"
    assert detail["sop_classes"] == {"1.2.840.10008.5.1.4.1.1.4": 3}


def test_purge_of_a_job_without_results_folder(settings: Settings, sessions: sessionmaker[Session]) -> None:
    settings = make_settings(settings.data_dir, retention_days=7)
    ingest_and_finish(settings, sessions, "1.2.7", JobStatus.SKIPPED)
    shutil.rmtree(settings.results_dir)  # a skipped job wrote no results
    age(sessions, 8)
    assert purge(settings, sessions) == 1
    assert not (settings.spool_dir / "1.2.7").exists()
    with sessions() as session:
        assert session.scalars(select(Study.state)).one() == StudyState.PURGED
