"""Jobs for IT staff: list and show them, retry a dead-lettered one, cancel a queued one; each change
goes through the job state table and is audited with the operator's name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import IllegalTransition
from dicomnode.jobs.models import Job, Series, Study
from dicomnode.jobs.repository import transition
from dicomnode.jobs.status import JobStatus


def _view(job: Job, series: Series, study: Study) -> dict[str, Any]:
    return {"id": job.id, "study_uid": study.study_uid, "series_uid": series.series_uid, "rule": job.rule,
            "model": job.model_id, "version": job.model_version, "status": job.status.value, "reason": job.reason,
            "attempts": job.attempts, "run_after": job.run_after.isoformat() if job.run_after else None,
            "updated_at": job.updated_at.isoformat()}


def job_rows(sessions: sessionmaker[Session], state: JobStatus | None = None, job_id: int | None = None,
             limit: int = 500) -> list[dict[str, Any]]:
    """Jobs, newest first, optionally only those in ``state`` or the one with ``job_id``."""
    query = (select(Job, Series, Study).join(Series, Job.series_id == Series.id)
             .join(Study, Series.study_id == Study.id).order_by(Job.id.desc()).limit(limit))
    if state is not None:
        query = query.where(Job.status == state)
    if job_id is not None:
        query = query.where(Job.id == job_id)
    with sessions() as session:
        return [_view(job, series, study) for job, series, study in session.execute(query)]


def retry(session: Session, job_id: int, user: str) -> None:
    """Queue a dead-lettered job again; raises :class:`IllegalTransition` when it is not dead-lettered."""
    _move(session, job_id, JobStatus.DEAD_LETTER, JobStatus.QUEUED, f"retried by operator {user}", user)


def cancel(session: Session, job_id: int, user: str) -> None:
    """Move a queued job to the dead letter; a running one cannot be cancelled."""
    _move(session, job_id, JobStatus.QUEUED, JobStatus.DEAD_LETTER, f"cancelled by operator {user}", user)


def _move(session: Session, job_id: int, current: JobStatus, new: JobStatus, reason: str, user: str) -> None:
    job = session.get(Job, job_id)
    if job is None:
        raise LookupError(f"no job {job_id}")
    if job.status is not current:
        raise IllegalTransition(f"job {job_id} is {job.status.value}, not {current.value}")
    # the operator's name goes where a worker's would: the audit row names who moved the job
    transition(session, job_id, current, new, reason, worker_id=user)
