"""Why is this study still waiting? The answer for the CLI, the API and the metrics, from the database."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.files import free_bytes
from dicomnode.jobs.models import Instance, Job, PriorStudy, Series, Study
from dicomnode.jobs.status import StudyState
from dicomnode.settings import Settings
from dicomnode.store.ingest import disk_guard

MASKED = "***"


def study_rows(sessions: sessionmaker[Session], study_uid: str | None = None, limit: int = 500, *,
               phi: bool = False, state: StudyState | None = None, calling_ae: str | None = None
               ) -> list[dict[str, Any]]:
    """Each study's state and reason, its series' routing decisions and its jobs' states and reasons.

    Patient name and ID are given only with ``phi``; otherwise they are masked.
    """
    with sessions() as session:
        query = select(Study).order_by(Study.id.desc()).limit(limit)
        if study_uid:
            query = query.where(Study.study_uid == study_uid)
        if state:
            query = query.where(Study.state == state)
        if calling_ae:
            query = query.where(Study.calling_ae == calling_ae)
        rows: list[dict[str, Any]] = []
        for study in session.scalars(query):
            jobs = session.scalars(select(Job).join(Job.series).where(Series.study_id == study.id)
                                   .order_by(Job.id)).all()
            received = dict(session.execute(select(Instance.series_id, func.count(Instance.id)).join(Instance.series)
                                            .where(Series.study_id == study.id).group_by(Instance.series_id)).all())
            rows.append({
                "study_uid": study.study_uid, "state": study.state.value, "reason": study.state_reason,
                "last_received_at": study.last_received_at.isoformat(), "calling_ae": study.calling_ae,
                "patient_name": (study.patient_name or "") if phi else MASKED,
                "patient_id": (study.patient_id or "") if phi else MASKED,
                "series": [{"series_uid": s.series_uid, "number": s.series_number, "route": s.route_reason,
                            "revision": s.revision, "instances": received.get(s.id, 0),
                            "pacs_instances": s.pacs_instances} for s in study.series],
                **pacs_view(session, study, received, [j.id for j in jobs]),
                "jobs": [{"id": j.id, "model": j.model_id, "version": j.model_version, "status": j.status.value,
                          "reason": j.reason, "attempts": j.attempts,
                          "run_after": j.run_after.isoformat() if j.run_after else None} for j in jobs],
            })
    return rows


def pacs_view(session: Session, study: Study, received: dict[int, int], job_ids: list[int]) -> dict[str, Any]:
    """What the query peer said of the study against what arrived, and the priors its jobs found, fetched
    and used (:mod:`dicomnode.query`)."""
    priors = session.scalars(select(PriorStudy).where(PriorStudy.job_id.in_(job_ids)).order_by(PriorStudy.id)).all()
    return {
        "pacs": {"instances": study.pacs_instances, "received": sum(received.values()),
                 "asked_at": study.pacs_asked_at.isoformat() if study.pacs_asked_at else None,
                 "note": study.pacs_note},
        "priors": [{"job": p.job_id, "study_uid": p.study_uid, "series_uid": p.series_uid, "date": p.study_date,
                    "peer": p.peer, "state": p.state, "reason": p.reason, "instances": p.instances,
                    "bytes": p.bytes, "seconds": round(p.seconds, 3)} for p in priors],
    }


def disk_status(settings: Settings) -> dict[str, Any]:
    guard = disk_guard(settings)
    return {"free_mb": round(free_bytes(settings.spool_dir) / 2**20), "min_free_mb": settings.min_free_disk_mb,
            "accepting": not guard, "reason": guard}


def study_timeline(sessions: sessionmaker[Session], study_uid: str, limit: int = 1000) -> list[dict[str, Any]]:
    """The study's audit events in order (received, complete, routed or not and why, job steps, sends),
    without the patient columns."""
    with sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.study_uid == study_uid)
                               .order_by(AuditRecord.id).limit(limit)).all()
        return [{"at": r.at.isoformat(), "event": r.event, "outcome": r.outcome,
                 "reason": str(json.loads(r.detail).get("reason", "")) if r.detail else ""} for r in rows]
