"""Retention: delete a study's spool and result files ``retention_days`` after its work ended.

A study is purged when it is complete and every job of it succeeded or was skipped (or it had nothing to
do), and the last of that happened more than ``retention_days`` ago. Dead-lettered work is kept for the
operator. Each purge is one transaction with its audit row (DICOM Study Deleted); study, series and job
rows stay as history.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.db import session_scope, utcnow
from dicomnode.jobs.models import Instance, Job, Series, Study
from dicomnode.jobs.status import JobStatus, StudyState
from dicomnode.log import extra
from dicomnode.results.files import job_folder
from dicomnode.settings import Settings
from dicomnode.store.index import sop_class_counts

log = logging.getLogger(__name__)

_DONE = (JobStatus.SUCCEEDED, JobStatus.SKIPPED)


def _due(session: Session, cutoff: dt.datetime) -> list[int]:
    studies = session.scalars(select(Study).where(
        Study.state.in_([StudyState.ROUTED, StudyState.NO_MATCH]), Study.completed_at < cutoff)).all()
    due = []
    for study in studies:
        jobs = session.execute(select(Job.status, Job.updated_at).join(Job.series)
                               .where(Series.study_id == study.id)).all()
        if all(status in _DONE for status, _ in jobs) and all(_before(at, cutoff) for _, at in jobs):
            due.append(study.id)
    return due


def _before(at: dt.datetime, cutoff: dt.datetime) -> bool:
    return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)) < cutoff


def purge(settings: Settings, sessions: sessionmaker[Session]) -> int:
    """Purge every study past retention; returns how many. ``retention_days = 0`` keeps everything."""
    if settings.retention_days <= 0:
        return 0
    cutoff = utcnow() - dt.timedelta(days=settings.retention_days)
    with sessions() as session:
        due = _due(session, cutoff)
    for study_id in due:
        _purge_study(settings, sessions, study_id)
    return len(due)


def _purge_study(settings: Settings, sessions: sessionmaker[Session], study_id: int) -> None:
    with session_scope(sessions) as session:
        study = session.get(Study, study_id)
        if study is None or study.state not in (StudyState.ROUTED, StudyState.NO_MATCH):
            return
        series_ids = select(Series.id).where(Series.study_id == study_id)
        paths = session.scalars(select(Instance.path).where(Instance.series_id.in_(series_ids))).all()
        sop_classes = sop_class_counts(session, study_id)
        job_ids = session.scalars(select(Job.id).where(Job.series_id.in_(series_ids))).all()
        session.execute(delete(Instance).where(Instance.series_id.in_(series_ids)))
        study.state = StudyState.PURGED
        study.state_reason = f"purged: files deleted after retention_days={settings.retention_days:g}"
        record(session, AuditEvent.STUDY_DELETED, actor=settings.ae_title, **study.subject(),
               instances=len(paths), sop_classes=sop_classes, results=len(job_ids), reason="retention policy")
    # The files go only once the deletion is committed with its audit row: a crash in between leaves files
    # without rows (harmless), never rows pointing at missing files.
    for path in paths:
        Path(path).unlink(missing_ok=True)
    shutil.rmtree(settings.spool_dir / study.study_uid, ignore_errors=True)
    for job_id in job_ids:
        shutil.rmtree(job_folder(settings.results_dir, job_id), ignore_errors=True)
    log.info("study purged", extra=extra(stage="retention", study_uid=study.study_uid, instances=len(paths)))
