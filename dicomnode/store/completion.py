"""The completeness sweep: a study with no new instance for ``study_idle_seconds`` is complete and routed.

Headers are read outside any transaction; the routing decision is then written in one transaction that
first checks the study did not receive anything meanwhile (else the next sweep judges it again). With a
:class:`HeaderCache`, a study's headers are read ahead once it has been quiet for half the idle time, so
that the sweep that finds it complete only decides (reading 189 headers took 0.06 s of CPU).

The sweep knows the installed models only as :class:`InstalledModels` (ids, versions and the series
check), handed in by the node: ``store/`` never imports ``inference/``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope, utcnow
from dicomnode.errors import SeriesNotUsable
from dicomnode.jobs.models import Instance, Job, Series, Study
from dicomnode.jobs.repository import enqueue
from dicomnode.jobs.routing import route
from dicomnode.jobs.status import StudyState
from dicomnode.log import extra
from dicomnode.settings import Rule
from dicomnode.store.index import sop_class_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstalledModels:
    """What routing needs of the installed models, passed in by the node.

    Parameters
    ----------
    versions
        Model id -> version of every model that can take a job.
    check_usable
        Raises :class:`~dicomnode.errors.SeriesNotUsable` for a series no model can read
        (:func:`dicomnode.inference.volume.check_usable`).
    """

    versions: Mapping[str, str]
    check_usable: Callable[[Sequence[Dataset]], None]


@dataclass
class SeriesPlan:
    series_id: int
    rules: list[Rule] = field(default_factory=list)
    reason: str = ""
    skipped: bool = False


def _read_headers(paths: Sequence[str]) -> list[Dataset]:
    return [dcmread(p, stop_before_pixels=True, force=True) for p in paths]


@dataclass
class HeaderCache:
    """Headers read ahead, by study and by (path, SHA-256 of the file as recorded): a replaced file is
    read again.

    It holds the headers of studies still receiving that a sweep found quiet for half the idle time; a
    study's entries go when it is routed or leaves the receiving state (:meth:`keep`, :meth:`drop`).
    """

    studies: dict[int, dict[tuple[str, str], Dataset]] = field(default_factory=dict)

    def read(self, study_id: int, files: Sequence[tuple[str, str]]) -> list[Dataset]:
        """The headers of ``files`` ((path, sha256) pairs), from the cache or read now (and kept)."""
        entries = self.studies.setdefault(study_id, {})
        headers = []
        for key in files:
            header = entries.get(key)
            if header is None:
                header = entries[key] = dcmread(key[0], stop_before_pixels=True, force=True)
            headers.append(header)
        return headers

    def read_ahead(self, study_id: int, files: Sequence[tuple[str, str]]) -> None:
        try:
            self.read(study_id, files)
        except Exception:  # read again (and judged) when the study is complete
            log.debug("header read-ahead failed", extra=extra(stage="sweep"))

    def reader(self, study_id: int, files: Sequence[tuple[str, str]]) -> Callable[[Sequence[str]], list[Dataset]]:
        """What :func:`plan_series` reads a study's headers with: this cache, given its ``files``' hashes."""
        hashes = dict(files)
        return lambda paths: self.read(study_id, [(p, hashes[p]) for p in paths])

    def keep(self, receiving: set[int]) -> None:
        self.studies = {sid: entries for sid, entries in self.studies.items() if sid in receiving}

    def drop(self, study_id: int) -> None:
        self.studies.pop(study_id, None)


def plan_series(series_id: int, paths: Sequence[str], rules: Sequence[Rule],
                check_usable: Callable[[Sequence[Dataset]], None],
                read: Callable[[Sequence[str]], list[Dataset]] = _read_headers) -> SeriesPlan:
    """Decide what happens to one series: which rules match, or why it is skipped.

    ``read`` gives the headers of ``paths`` (from a :class:`HeaderCache`, or read now); ``check_usable``
    raises SeriesNotUsable for a series that no model can read.
    """
    plan = SeriesPlan(series_id)
    try:
        headers = read(paths)
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


@dataclass(frozen=True)
class _Candidate:
    study_id: int
    last: dt.datetime  # as the database returned it (compared with the row again before routing)
    files: dict[int, list[tuple[str, str]]]  # (path, sha256) by series id

    @property
    def all_files(self) -> list[tuple[str, str]]:
        return [f for files in self.files.values() for f in files]

    def complete_at(self, idle_seconds: float) -> float:
        last = self.last if self.last.tzinfo else self.last.replace(tzinfo=dt.UTC)
        return last.timestamp() + idle_seconds


def _candidates(sessions: sessionmaker[Session], quiet_since: dt.datetime) -> list[_Candidate]:
    """Studies still receiving whose last instance came before ``quiet_since``, with their files."""
    with sessions() as session:
        studies = session.execute(select(Study.id, Study.last_received_at).where(
            Study.state == StudyState.RECEIVING, Study.last_received_at < quiet_since)).all()
        out = []
        for study_id, last in studies:
            rows = session.execute(select(Series.id, Instance.path, Instance.sha256).join(Instance.series)
                                   .where(Series.study_id == study_id).order_by(Series.id, Instance.id)).all()
            files: dict[int, list[tuple[str, str]]] = {}
            for series_id, path, sha in rows:
                files.setdefault(series_id, []).append((path, sha))
            out.append(_Candidate(study_id, last, files))
    return out


def sweep(
    sessions: sessionmaker[Session], idle_seconds: float, rules: Sequence[Rule], models: InstalledModels,
    cache: HeaderCache | None = None, wait_seconds: float = 0.0, on_routed: Callable[[], None] | None = None,
) -> int:
    """Route every study that has been quiet for ``idle_seconds``; returns how many were routed.

    With a ``cache``, the headers of studies quiet for half of ``idle_seconds`` are read ahead into it. A
    study that becomes complete within ``wait_seconds`` (the sweep interval) is waited for and judged
    in this sweep, at the moment it is complete, instead of at the next one. ``on_routed`` is called as
    soon as each study is routed (to wake the workers before the sweep waits for the next).
    """
    now = time.time()
    lead = max(idle_seconds / 2 if cache is not None else 0.0, min(wait_seconds, idle_seconds))
    work = sorted(_candidates(sessions, utcnow() - dt.timedelta(seconds=idle_seconds - lead)),
                  key=lambda c: c.complete_at(idle_seconds))
    if cache is not None:
        with sessions() as session:
            cache.keep(set(session.scalars(select(Study.id).where(Study.state == StudyState.RECEIVING))))
    routed = 0
    for candidate in work:
        if cache is not None:
            cache.read_ahead(candidate.study_id, candidate.all_files)
        if candidate.complete_at(idle_seconds) - now > wait_seconds:
            continue  # judged by a later sweep
        time.sleep(max(0.0, candidate.complete_at(idle_seconds) - time.time()))
        if _judge(sessions, candidate, rules, models, cache):
            routed += 1
            if on_routed is not None:
                on_routed()
    return routed


def _judge(sessions: sessionmaker[Session], candidate: _Candidate, rules: Sequence[Rule],
           models: InstalledModels, cache: HeaderCache | None) -> bool:
    """Plan and route one complete study; False when more arrived meanwhile (judged again on a later sweep)."""
    read = cache.reader(candidate.study_id, candidate.all_files) if cache is not None else _read_headers
    plans = [plan_series(sid, [p for p, _ in files], rules, models.check_usable, read)
             for sid, files in candidate.files.items()]
    with session_scope(sessions) as session:
        study = session.get(Study, candidate.study_id, with_for_update=True)  # one sweeper per study, across processes
        if study is None or study.state != StudyState.RECEIVING or study.last_received_at != candidate.last:
            return False
        _apply(session, study, plans, models.versions, len(candidate.all_files))
    if cache is not None:
        cache.drop(candidate.study_id)
    return True


def _apply(session: Session, study: Study, plans: list[SeriesPlan], versions: Mapping[str, str],
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
            version = versions.get(rule.model)
            if version is None:
                series.route_reason += f"; rule {rule.name} names unknown model {rule.model!r}"
                continue
            enqueue(session, series, rule.name, rule.model, version)
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
