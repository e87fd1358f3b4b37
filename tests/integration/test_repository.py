from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.db import session_scope, utcnow
from dicomnode.errors import IllegalTransition
from dicomnode.jobs.models import Job, JobEvent, Series, Study
from dicomnode.jobs.repository import claim, enqueue, heartbeat, release_held, requeue_expired, transition
from dicomnode.jobs.status import JobStatus


def _series(session: Session, n: int = 1) -> list[Series]:
    study = Study(study_uid="1.2.3", calling_ae="PACS")
    out = [Series(series_uid=f"1.2.3.{i}", study=study) for i in range(n)]
    session.add_all(out)
    session.flush()
    return out


def _claimed(sessions: sessionmaker[Session], worker: str, model: str = "m", version: str = "1",
             rule: str = "rule") -> Job:
    """One series with one job queued, claimed by ``worker``."""
    with session_scope(sessions) as session:
        (series,) = _series(session)
        enqueue(session, series, rule, model, version)
    job = claim(sessions, worker, 60)
    assert job is not None
    return job


def test_enqueue_is_idempotent(any_sessions: sessionmaker[Session]) -> None:
    with session_scope(any_sessions) as session:
        (series,) = _series(session)
        assert enqueue(session, series, "rule", "deepbet", "1.0.2") is not None
        assert enqueue(session, series, "rule", "deepbet", "1.0.2") is None
        assert enqueue(session, series, "rule", "deepbet", "2.0") is not None
    with any_sessions() as session:
        assert len(session.scalars(select(Job)).all()) == 2
        assert [a.event for a in session.scalars(select(AuditRecord))] == ["job_queued", "job_queued"]


def test_queued_and_finished_jobs_name_their_model_in_the_audit_trail(any_sessions: sessionmaker[Session]) -> None:
    job = _claimed(any_sessions, "w1", "deepbet", "1.0.2", rule="brain")
    with session_scope(any_sessions) as session:
        transition(session, job.id, JobStatus.RUNNING, JobStatus.SUCCEEDED, "done", worker_id="w1")
    with any_sessions() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
        details = {row.event: json.loads(row.detail) for row in rows}
    assert details["job_queued"]["model"] == "deepbet" and details["job_queued"]["model_version"] == "1.0.2"
    assert details["job_queued"]["rule"] == "brain" and details["job_queued"]["series_uid"] == "1.2.3.0"
    assert details["job_queued"]["revision"] == 1  # which content of the series the job is for
    queued = next(row for row in rows if row.event == "job_queued")
    assert (queued.actor, queued.study_uid) == ("router", "1.2.3")  # routing queued it, for that study
    assert details["job_succeeded"]["model"] == "deepbet" and details["job_succeeded"]["reason"] == "done"


def test_claim_runs_and_finishes(any_sessions: sessionmaker[Session]) -> None:
    with session_scope(any_sessions) as session:
        (series,) = _series(session)
        enqueue(session, series, "rule", "m", "1")
    job = claim(any_sessions, "w1", 60)
    assert job is not None and job.attempts == 1 and job.study_uid == "1.2.3"
    assert claim(any_sessions, "w2", 60) is None
    with session_scope(any_sessions) as session:
        with pytest.raises(IllegalTransition, match="no longer running"):
            transition(session, job.id, JobStatus.RUNNING, JobStatus.SUCCEEDED, "x", worker_id="w2")
    with session_scope(any_sessions) as session:
        transition(session, job.id, JobStatus.RUNNING, JobStatus.SUCCEEDED, "done", worker_id="w1")
    with any_sessions() as session:
        events = session.scalars(select(JobEvent).order_by(JobEvent.id)).all()
        assert [(e.from_status, e.to_status) for e in events] == [
            (None, JobStatus.QUEUED), (JobStatus.QUEUED, JobStatus.RUNNING), (JobStatus.RUNNING, JobStatus.SUCCEEDED)]
        assert [e.reason for e in events][1:] == ["claimed", "done"]  # the job's history says why each move
        audit = list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))
        assert [a.event for a in audit] == ["job_queued", "job_started", "job_succeeded"]
        assert (audit[1].actor, json.loads(audit[1].detail)["reason"]) == ("w1", "claimed")  # who took it


def test_concurrent_claims_take_each_job_once(any_sessions: sessionmaker[Session]) -> None:
    with session_scope(any_sessions) as session:
        for series in _series(session, 30):
            enqueue(session, series, "rule", "m", "1")
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := claim(any_sessions, name, 60)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 31))


def test_expired_lease_is_requeued(any_sessions: sessionmaker[Session]) -> None:
    job = _claimed(any_sessions, "dead-worker")
    assert requeue_expired(any_sessions) == 0
    with session_scope(any_sessions) as session:
        session.execute(update(Job).values(lease_until=utcnow() - dt.timedelta(seconds=1)))
    assert requeue_expired(any_sessions) == 1
    with any_sessions() as session:  # the reason an operator reads in the job's history
        last = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id.desc())).first()
        assert last is not None and (last.to_status, last.reason) == (JobStatus.QUEUED, "lease expired: worker gone")
        audited = session.scalars(select(AuditRecord).order_by(AuditRecord.id.desc())).first()
        assert audited is not None and audited.actor == "node"  # no worker moved it: the node did
    again = claim(any_sessions, "live-worker", 60)
    assert again is not None and again.id == job.id and again.attempts == 2



def test_a_heartbeat_extends_only_the_lease_its_worker_still_holds(any_sessions: sessionmaker[Session]) -> None:
    job = _claimed(any_sessions, "w1")
    with any_sessions() as session:
        before = session.scalars(select(Job.lease_until)).one()
    assert heartbeat(any_sessions, job.id, "w1", 600) is True
    with any_sessions() as session:
        extended = session.scalars(select(Job.lease_until)).one()
    assert extended - before > dt.timedelta(seconds=500)
    assert heartbeat(any_sessions, job.id, "w2", 6000) is False  # not its job: nothing changes
    assert heartbeat(any_sessions, job.id + 1, "w1", 6000) is False
    with any_sessions() as session:
        assert session.scalars(select(Job.lease_until)).one() == extended
    with session_scope(any_sessions) as session:
        transition(session, job.id, JobStatus.RUNNING, JobStatus.SUCCEEDED, "done", worker_id="w1")
    assert heartbeat(any_sessions, job.id, "w1", 6000) is False  # finished: no lease to hold
    with any_sessions() as session:
        assert session.scalars(select(Job.lease_until)).one() is None


def test_clean_stop_releases_held_jobs(any_sessions: sessionmaker[Session]) -> None:
    with session_scope(any_sessions) as session:
        (series,) = _series(session)
        enqueue(session, series, "rule", "m", "1")
    assert claim(any_sessions, "w1", 60) is not None
    assert release_held(any_sessions, "other") == 0
    assert release_held(any_sessions, "w1") == 1
    with any_sessions() as session:
        assert session.scalars(select(Job.status)).one() is JobStatus.QUEUED
        last = session.scalars(select(JobEvent).order_by(JobEvent.id.desc())).first()
        assert last is not None and (last.from_status, last.to_status, last.reason) == (
            JobStatus.RUNNING, JobStatus.QUEUED, "worker stopped")  # why, in the job's history
        audited = session.scalars(select(AuditRecord).order_by(AuditRecord.id.desc())).first()
        assert audited is not None and (audited.actor, json.loads(audited.detail)["reason"]) == ("w1", "worker stopped")


def test_job_whose_worker_keeps_dying_goes_to_the_dead_letter(any_sessions: sessionmaker[Session]) -> None:
    with session_scope(any_sessions) as session:
        (series,) = _series(session)
        enqueue(session, series, "rule", "m", "1")
    for attempt in range(1, 4):
        job = claim(any_sessions, f"doomed-{attempt}", 60)
        assert job is not None and job.attempts == attempt
        with session_scope(any_sessions) as session:
            session.execute(update(Job).values(lease_until=utcnow() - dt.timedelta(seconds=1)))
        assert requeue_expired(any_sessions, max_attempts=3) == 1
    with any_sessions() as session:
        job_row = session.scalars(select(Job)).one()
        assert job_row.status is JobStatus.DEAD_LETTER
        assert job_row.reason == "gave up after 3 attempts: the worker died during each"
    assert claim(any_sessions, "next", 60) is None
