"""Moving jobs: enqueue (idempotent), claim (atomic), transition (checked), lease upkeep.

Every transition is a conditional UPDATE ``... WHERE id = :id AND status = :from`` and writes a
JobEvent row and an audit row in the same transaction, so that two workers (threads, processes or
hosts) never both move one job, and the history is never out of step with the state.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome, Subject
from dicomnode.audit.trail import record
from dicomnode.db import anything, session_scope, utcnow
from dicomnode.errors import IllegalTransition
from dicomnode.jobs.models import Job, JobEvent, Series, Study
from dicomnode.jobs.status import JobStatus, check_transition

_AUDIT_FOR = {
    JobStatus.QUEUED: (AuditEvent.JOB_REQUEUED, Outcome.SUCCESS),
    JobStatus.RUNNING: (AuditEvent.JOB_STARTED, Outcome.SUCCESS),
    JobStatus.SUCCEEDED: (AuditEvent.JOB_SUCCEEDED, Outcome.SUCCESS),
    JobStatus.SKIPPED: (AuditEvent.JOB_SKIPPED, Outcome.MINOR_FAILURE),
    JobStatus.DEAD_LETTER: (AuditEvent.JOB_FAILED, Outcome.SERIOUS_FAILURE),
}


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs of a job it holds, detached from any session."""

    id: int
    series_id: int
    series_uid: str
    series_number: int | None
    study_uid: str
    patient_id: str | None
    patient_name: str | None
    model_id: str
    model_version: str
    revision: int
    attempts: int

    def subject(self) -> Subject:
        return {"study_uid": self.study_uid, "patient_id": self.patient_id, "patient_name": self.patient_name}


def _study_of(session: Session, job: Job) -> Study:
    return job.series.study


def enqueue(session: Session, series: Series, rule: str, model_id: str, model_version: str) -> Job | None:
    """Queue ``model_id`` on the current revision of ``series``, unless that job exists; returns the new job."""
    existing = session.scalar(select(Job).where(
        Job.series_id == series.id, Job.model_id == model_id, Job.model_version == model_version,
        Job.revision == series.revision))
    if existing is not None:
        return None
    job = Job(series=series, rule=rule, model_id=model_id, model_version=model_version,
              revision=series.revision, status=JobStatus.QUEUED)
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, from_status=None, to_status=JobStatus.QUEUED, reason=f"rule {rule}"))
    record(session, AuditEvent.JOB_QUEUED, actor="router", **series.study.subject(), job_id=job.id, model=model_id,
           model_version=model_version,
           rule=rule, series_uid=series.series_uid, revision=series.revision)
    return job


def transition(
    session: Session, job_id: int, current: JobStatus, new: JobStatus, reason: str = "", *,
    worker_id: str | None = None, lease_until: dt.datetime | None = None, run_after: dt.datetime | None = None,
) -> None:
    """Move job ``job_id`` from ``current`` to ``new`` or raise :class:`IllegalTransition`.

    ``run_after`` (with ``new`` QUEUED) schedules a retry: no worker claims the job before then.
    """
    check_transition(current, new)
    values: dict[str, object] = {"status": new, "reason": reason, "updated_at": utcnow(), "run_after": run_after}
    if new is JobStatus.RUNNING:
        values.update(worker_id=worker_id, lease_until=lease_until, attempts=Job.attempts + 1)
    else:
        values.update(worker_id=None, lease_until=None)
    stmt = update(Job).where(Job.id == job_id, Job.status == current)
    if current is JobStatus.RUNNING and worker_id is not None:
        stmt = stmt.where(Job.worker_id == worker_id)  # only the lease holder finishes a running job
    result = session.execute(stmt.values(**values).execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise IllegalTransition(f"job {job_id} is no longer {current.value}")
    session.add(JobEvent(job_id=job_id, from_status=current, to_status=new, reason=reason))
    job = session.get(Job, job_id)
    assert job is not None
    session.refresh(job)
    event, outcome = _AUDIT_FOR[new]
    study = _study_of(session, job)
    record(session, event, outcome, actor=worker_id or "node", **study.subject(), job_id=job_id,
           model=job.model_id, reason=reason)


def claim(sessions: sessionmaker[Session], worker_id: str, lease_seconds: float) -> ClaimedJob | None:
    """Take the oldest queued job, atomically; None when there is none."""
    now = utcnow()
    query = (select(Job.id).where(Job.status == JobStatus.QUEUED, or_(Job.run_after.is_(None), Job.run_after <= now))
             .order_by(Job.id).limit(1))
    if not anything(sessions, query):
        return None
    with session_scope(sessions) as session:
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        job_id = session.scalar(query)
        if job_id is None:
            return None
        lease = now + dt.timedelta(seconds=lease_seconds)
        try:
            transition(session, job_id, JobStatus.QUEUED, JobStatus.RUNNING, "claimed",
                       worker_id=worker_id, lease_until=lease)
        except IllegalTransition:
            return None  # another worker was faster
        job = session.get(Job, job_id)
        assert job is not None
        study = job.series.study
        return ClaimedJob(id=job.id, series_id=job.series_id, series_uid=job.series.series_uid,
                          series_number=job.series.series_number, study_uid=study.study_uid,
                          patient_id=study.patient_id, patient_name=study.patient_name, model_id=job.model_id,
                          model_version=job.model_version, revision=job.revision, attempts=job.attempts)


def heartbeat(sessions: sessionmaker[Session], job_id: int, worker_id: str, lease_seconds: float) -> bool:
    """Extend the lease of a job this worker holds; False when it holds it no more."""
    with session_scope(sessions) as session:
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)
            .values(lease_until=utcnow() + dt.timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def requeue_expired(sessions: sessionmaker[Session], max_attempts: int | None = None) -> int:
    """Put RUNNING jobs whose lease ran out (their worker died) back in the queue; returns how many.

    A job whose worker died in each of ``max_attempts`` attempts (a model crashing the process on that
    series, say) goes to the dead letter instead: nothing loops forever.
    """
    expired = (Job.status == JobStatus.RUNNING, Job.lease_until < utcnow())
    if not anything(sessions, select(Job.id).where(*expired)):
        return 0
    with session_scope(sessions) as session:
        rows = session.execute(select(Job.id, Job.attempts).where(*expired)).all()
        for job_id, attempts in rows:
            if max_attempts is not None and attempts >= max_attempts:
                transition(session, job_id, JobStatus.RUNNING, JobStatus.DEAD_LETTER,
                           f"gave up after {attempts} attempts: the worker died during each")
            else:
                transition(session, job_id, JobStatus.RUNNING, JobStatus.QUEUED, "lease expired: worker gone")
        return len(rows)


def release_held(sessions: sessionmaker[Session], worker_id: str) -> int:
    """On a clean stop: put this worker's RUNNING jobs back in the queue; returns how many."""
    with session_scope(sessions) as session:
        ids = session.scalars(select(Job.id).where(
            Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)).all()
        for job_id in ids:
            transition(session, job_id, JobStatus.RUNNING, JobStatus.QUEUED, "worker stopped",
                       worker_id=worker_id)
        return len(ids)
