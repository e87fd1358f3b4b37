"""Why is this study still waiting? The answer for the CLI, the API and the metrics, from the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.jobs.models import AuditRecord, Instance, Job, Series, Study
from dicomnode.receive.handlers import disk_guard
from dicomnode.settings import Settings
from dicomnode.store.spool import free_bytes


def study_rows(sessions: sessionmaker[Session], study_uid: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Each study's state and reason, its series' routing decisions and its jobs' states and reasons."""
    with sessions() as session:
        query = select(Study).order_by(Study.id.desc()).limit(limit)
        if study_uid:
            query = query.where(Study.study_uid == study_uid)
        rows: list[dict[str, Any]] = []
        for study in session.scalars(query):
            jobs = session.scalars(select(Job).join(Job.series).where(Series.study_id == study.id)
                                   .order_by(Job.id)).all()
            rows.append({
                "study_uid": study.study_uid, "state": study.state.value, "reason": study.state_reason,
                "last_received_at": study.last_received_at.isoformat(),
                "series": [{"series_uid": s.series_uid, "number": s.series_number, "route": s.route_reason,
                            "revision": s.revision} for s in study.series],
                "jobs": [{"id": j.id, "model": j.model_id, "version": j.model_version, "status": j.status.value,
                          "reason": j.reason, "attempts": j.attempts,
                          "run_after": j.run_after.isoformat() if j.run_after else None} for j in jobs],
            })
    return rows


def disk_status(settings: Settings) -> dict[str, Any]:
    guard = disk_guard(settings)
    return {"free_mb": round(free_bytes(settings.spool_dir) / 2**20), "min_free_mb": settings.min_free_disk_mb,
            "accepting": not guard, "reason": guard}


def metrics(settings: Settings, sessions: sessionmaker[Session]) -> str:
    """Prometheus text exposition (format 0.0.4)."""
    with sessions() as session:
        studies = dict(session.execute(select(Study.state, func.count()).group_by(Study.state)).all())
        jobs = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        instances = session.scalar(select(func.count()).select_from(Instance)) or 0
        audit_rows = session.scalar(select(func.count()).select_from(AuditRecord)) or 0
    lines = ["# HELP dicomnode_studies Studies by state.", "# TYPE dicomnode_studies gauge"]
    lines += [f'dicomnode_studies{{state="{state.value}"}} {n}' for state, n in sorted(studies.items())]
    lines += ["# HELP dicomnode_jobs Jobs by status.", "# TYPE dicomnode_jobs gauge"]
    lines += [f'dicomnode_jobs{{status="{status.value}"}} {n}' for status, n in sorted(jobs.items())]
    lines += ["# HELP dicomnode_instances Instances held in the spool.", "# TYPE dicomnode_instances gauge",
              f"dicomnode_instances {instances}",
              "# HELP dicomnode_audit_rows Rows in the audit trail.", "# TYPE dicomnode_audit_rows counter",
              f"dicomnode_audit_rows {audit_rows}",
              "# HELP dicomnode_disk_free_bytes Free space where the spool lives.",
              "# TYPE dicomnode_disk_free_bytes gauge", f"dicomnode_disk_free_bytes {free_bytes(settings.spool_dir)}",
              "# HELP dicomnode_accepting 1 while the disk guard lets instances in.",
              "# TYPE dicomnode_accepting gauge", f"dicomnode_accepting {0 if disk_guard(settings) else 1}"]
    return "\n".join(lines) + "\n"
