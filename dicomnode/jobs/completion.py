"""The completeness sweep: a study with no new instance for ``study_idle_seconds`` is complete and routed.

Headers are read outside any transaction; the routing decision is then written in one transaction that
first checks the study did not receive anything meanwhile (else the next sweep judges it again).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.errors import SeriesNotUsable
from dicomnode.inference.registry import Manifest
from dicomnode.inference.volume import check_usable
from dicomnode.jobs.models import Instance, Job, Series, Study, utcnow
from dicomnode.jobs.repository import enqueue
from dicomnode.jobs.routing import route
from dicomnode.jobs.status import StudyState
from dicomnode.log import extra
from dicomnode.settings import Rule
from dicomnode.store.index import sop_class_counts

log = logging.getLogger(__name__)


@dataclass
class SeriesPlan:
    series_id: int
    rules: list[Rule] = field(default_factory=list)
    reason: str = ""
    skipped: bool = False


def _read_headers(paths: Sequence[str]) -> list[Dataset]:
    return [dcmread(p, stop_before_pixels=True, force=True) for p in paths]


def plan_series(series_id: int, paths: Sequence[str], rules: Sequence[Rule]) -> SeriesPlan:
    """Decide what happens to one series: which rules match, or why it is skipped."""
    plan = SeriesPlan(series_id)
    try:
        headers = _read_headers(paths)
        check_usable(headers)
    except SeriesNotUsable as exc:
        plan.skipped, plan.reason = True, f"skipped: {exc}"
        return plan
    except Exception as exc:
        plan.skipped, plan.reason = True, f"skipped: instances could not be read ({type(exc).__name__})"
        return plan
    plan.rules, reasons = route(rules, headers[0])
    plan.reason = ("matched: " + ", ".join(r.name for r in plan.rules)) if plan.rules \
        else "no rule matched: " + "; ".join(reasons or ["no rules configured"])
    return plan


def sweep(
    sessions: sessionmaker[Session], idle_seconds: float, rules: Sequence[Rule], manifests: dict[str, Manifest]
) -> int:
    """Route every study that has been quiet for ``idle_seconds``; returns how many were routed."""
    cutoff = utcnow() - dt.timedelta(seconds=idle_seconds)
    with sessions() as session:
        candidates = session.execute(select(Study.id, Study.last_received_at).where(
            Study.state == StudyState.RECEIVING, Study.last_received_at < cutoff)).all()
        work = []
        for study_id, last in candidates:
            rows = session.execute(select(Series.id, Instance.path).join(Instance.series)
                                   .where(Series.study_id == study_id).order_by(Series.id, Instance.id)).all()
            by_series: dict[int, list[str]] = {}
            for series_id, path in rows:
                by_series.setdefault(series_id, []).append(path)
            work.append((study_id, last, by_series))
    routed = 0
    for study_id, last, by_series in work:
        plans = [plan_series(sid, paths, rules) for sid, paths in by_series.items()]
        with session_scope(sessions) as session:
            study = session.get(Study, study_id, with_for_update=True)  # one sweeper per study, across processes
            if study is None or study.state != StudyState.RECEIVING or study.last_received_at != last:
                continue  # more arrived meanwhile: judged again on a later sweep
            _apply(session, study, plans, manifests, sum(len(p) for p in by_series.values()))
            routed += 1
    return routed


def _apply(session: Session, study: Study, plans: list[SeriesPlan], manifests: dict[str, Manifest],
           n_instances: int) -> None:
    study.completed_at = utcnow()
    sop_classes = sop_class_counts(session, study.id)
    record(session, AuditEvent.STUDY_RECEIVED, actor=study.calling_ae, **study.subject(),
           address=study.calling_address, series=len(plans),
           instances=n_instances, sop_classes=sop_classes)
    for plan in plans:
        series = session.get(Series, plan.series_id)
        assert series is not None
        series.route_reason = plan.reason
        if plan.skipped:
            record(session, AuditEvent.SERIES_SKIPPED, Outcome.MINOR_FAILURE, actor="router",
                   **study.subject(), series_uid=series.series_uid,
                   reason=plan.reason)
        for rule in plan.rules:
            manifest = manifests.get(rule.model)
            if manifest is None:
                series.route_reason += f"; rule {rule.name} names unknown model {rule.model!r}"
                continue
            enqueue(session, series, rule.name, manifest.id, manifest.version)
        series.routed_revision = series.revision
    session.flush()
    n_jobs = len(session.scalars(select(Job.id).join(Job.series).where(Series.study_id == study.id)).all())
    if n_jobs:
        study.state, study.state_reason = StudyState.ROUTED, f"routed: {n_jobs} job(s)"
    else:
        study.state = StudyState.NO_MATCH
        study.state_reason = "nothing to do: " + " | ".join(
            f"series {session.get(Series, p.series_id).series_number}: {p.reason}"  # type: ignore[union-attr]
            for p in plans)
        record(session, AuditEvent.STUDY_NOT_ROUTED, Outcome.SUCCESS, actor="router",
               **study.subject(), reason=study.state_reason)
    log.info("study complete", extra=extra(stage="route", study_uid=study.study_uid, series=len(plans),
                                           jobs=n_jobs, state=study.state.value))
