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
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import anything, session_scope, utcnow
from dicomnode.errors import SeriesNotUsable
from dicomnode.jobs.models import Instance, Job, PriorStudy, Series, Study
from dicomnode.jobs.repository import enqueue
from dicomnode.jobs.routing import route
from dicomnode.jobs.status import StudyState
from dicomnode.log import extra
from dicomnode.settings import Rule, Settings
from dicomnode.store.index import sop_class_counts
from dicomnode.store.part10 import read_to_pixels

log = logging.getLogger(__name__)
AskCounts = Callable[[int], "futures.Future[None]"]  # ask the query peer for a study's counts (by id); at once


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
    suspended
        Model id -> why the rules naming it route nothing now (the model is unavailable, or a
        demonstration model while ``demo_models`` is off; :func:`dicomnode.inference.registry.suspended`):
        such a rule gives no job, and the series' and study's reasons say why.
    """

    versions: Mapping[str, str]
    check_usable: Callable[[Sequence[Dataset]], None]
    suspended: Mapping[str, str] = field(default_factory=dict)


@dataclass
class SeriesPlan:
    series_id: int
    rules: list[Rule] = field(default_factory=list)
    reason: str = ""
    skipped: bool = False


@dataclass
class HeaderCache:
    """Headers read ahead, by study and by (path, SHA-256 of the file as recorded): a replaced file is
    read again.

    It holds the headers of studies still receiving that a sweep found quiet for half the idle time; a
    study's entries go when it is routed or leaves the receiving state (:meth:`keep`, :meth:`drop`).
    """

    # the node passes its settings.max_inflated_bytes; else the setting's default (deflated: inflated on disk)
    inflated_limit: int = int(Settings.model_fields["max_inflated_mb"].default * 2**20)
    studies: dict[int, dict[tuple[str, str], Dataset]] = field(default_factory=dict)

    def read(self, study_id: int, files: Sequence[tuple[str, str]]) -> list[Dataset]:
        """The headers of ``files`` ((path, sha256) pairs), from the cache or read now (and kept)."""
        entries = self.studies.setdefault(study_id, {})
        headers = []
        for key in files:
            header = entries.get(key)
            if header is None:
                header = entries[key] = read_to_pixels(Path(key[0]), self.inflated_limit)
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
                read: Callable[[Sequence[str]], list[Dataset]]) -> SeriesPlan:
    """Decide what happens to one series: which rules match, or why it is skipped.

    ``read`` gives the headers of ``paths`` (:meth:`HeaderCache.reader`); ``check_usable``
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
    counted: bool = False  # a query peer's counts, asked after the last instance came, match what arrived

    @property
    def all_files(self) -> list[tuple[str, str]]:
        return [f for files in self.files.values() for f in files]

    def complete_at(self, idle_seconds: float) -> float:
        """When the study is complete: at once when the PACS's counts say so, else after the idle timer."""
        return _utc(self.last) if self.counted else _utc(self.last) + idle_seconds


def _utc(at: dt.datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()


@dataclass(frozen=True)
class _Tally:
    """A receiving study as the counts see it: what arrived, and what the query peer said and when."""

    study_id: int
    last: dt.datetime
    pacs_instances: int | None
    asked_at: dt.datetime | None
    received: int
    series_agree: bool  # every series that arrived has the count the peer gave for it

    @property
    def matches(self) -> bool:
        return self.pacs_instances is not None and self.received == self.pacs_instances and self.series_agree

    @property
    def decided(self) -> bool:
        """Complete by counts: they match, and the peer gave them after the last instance came."""
        return self.matches and self.asked_at is not None and _utc(self.asked_at) >= _utc(self.last)


def _not_prior() -> Any:
    return Study.study_uid.not_in(select(PriorStudy.study_uid))


def _tallies(sessions: sessionmaker[Session]) -> list[_Tally]:
    """Every receiving study (priors aside) with its received and PACS counts, in two queries."""
    with sessions() as session:
        studies = session.execute(select(Study.id, Study.last_received_at, Study.pacs_instances, Study.pacs_asked_at)
                                  .where(Study.state == StudyState.RECEIVING, _not_prior())).all()
        per_series = session.execute(
            select(Series.study_id, Series.pacs_instances, func.count(Instance.id)).join(Instance.series)
            .join(Series.study).where(Study.state == StudyState.RECEIVING).group_by(Series.id)).all()
    received: dict[int, int] = {}
    agree: dict[int, bool] = {}
    for study_id, pacs, n in per_series:
        received[study_id] = received.get(study_id, 0) + n
        agree[study_id] = agree.get(study_id, True) and pacs == n
    return [_Tally(sid, last, pacs, asked, received.get(sid, 0), agree.get(sid, False))
            for sid, last, pacs, asked in studies]


def _ask_counts(tallies: Sequence[_Tally], ask_counts: AskCounts, now: float, quiet_seconds: float,
                wait_seconds: float) -> bool:
    """Ask the query peer for counts: when a study starts arriving (not waited for), and, waited for up
    to ``wait_seconds``, when its counts matched before the last instance came or it has gone quiet
    since it was last asked. True when an answer came that this sweep should see."""
    waiting = []
    for tally in tallies:
        if tally.asked_at is None:
            ask_counts(tally.study_id)
        elif _utc(tally.asked_at) < _utc(tally.last) and (
                tally.matches or now - _utc(tally.last) >= quiet_seconds):
            waiting.append(ask_counts(tally.study_id))
    if waiting:
        futures.wait(waiting, timeout=wait_seconds)
    return bool(waiting)


COUNTS_POLL_SECONDS = 0.025


def _by_counts(sessions: sessionmaker[Session], ask_counts: AskCounts, quiet_seconds: float,
               wait_seconds: float) -> tuple[set[int], set[int]]:
    """The receiving studies complete by counts, and those whose counts are known. While a study with
    known counts is still short of them and receiving (its last instance within ``quiet_seconds``), the
    tallies are read again every :data:`COUNTS_POLL_SECONDS` for up to ``wait_seconds`` (the sweep
    interval), so that the study is confirmed and routed as soon as its last instance lands."""
    until = time.time() + wait_seconds
    tallies = _tallies(sessions)
    while True:
        now = time.time()
        if _ask_counts(tallies, ask_counts, now, quiet_seconds, max(0.0, until - now)):
            tallies = _tallies(sessions)
        arriving = any(t.pacs_instances is not None and t.received < t.pacs_instances
                       and now - _utc(t.last) < quiet_seconds for t in tallies)
        if any(t.decided for t in tallies) or not arriving or time.time() + COUNTS_POLL_SECONDS >= until:
            break
        time.sleep(COUNTS_POLL_SECONDS)
        tallies = _tallies(sessions)
    return {t.study_id for t in tallies if t.decided}, {t.study_id for t in tallies if t.pacs_instances is not None}


def _candidates(sessions: sessionmaker[Session], quiet_since: dt.datetime,
                counted: Collection[int] = (), known: Collection[int] = ()) -> list[_Candidate]:
    """Studies still receiving whose last instance came before ``quiet_since``, complete by counts
    (``counted``) or with counts known (``known``: their headers are read ahead), with their files."""
    with sessions() as session:
        studies = session.execute(select(Study.id, Study.last_received_at).where(
            Study.state == StudyState.RECEIVING, _not_prior(),
            or_(Study.last_received_at < quiet_since, Study.id.in_(list({*counted, *known}))))).all()
        out = []
        for study_id, last in studies:
            rows = session.execute(select(Series.id, Instance.path, Instance.sha256).join(Instance.series)
                                   .where(Series.study_id == study_id).order_by(Series.id, Instance.id)).all()
            files: dict[int, list[tuple[str, str]]] = {}
            for series_id, path, sha in rows:
                files.setdefault(series_id, []).append((path, sha))
            out.append(_Candidate(study_id, last, files, counted=study_id in counted))
    return out


def keep_priors(sessions: sessionmaker[Session], quiet_since: dt.datetime) -> int:
    """Prior studies fetched for comparison (their UIDs are in ``prior_study``) that have gone quiet:
    complete and kept (under retention, like any study), never routed."""
    quiet = (Study.state == StudyState.RECEIVING, Study.last_received_at < quiet_since,
             Study.study_uid.in_(select(PriorStudy.study_uid)))
    if not anything(sessions, select(Study.id).where(*quiet)):
        return 0
    with session_scope(sessions) as session:
        studies = session.scalars(select(Study).where(*quiet)).all()
        for study in studies:
            study.state, study.completed_at = StudyState.NO_MATCH, utcnow()
            study.state_reason = "a prior study, fetched for comparison: kept, not routed"
    return len(studies)


def sweep(
    sessions: sessionmaker[Session], idle_seconds: float, rules: Sequence[Rule], models: InstalledModels,
    cache: HeaderCache | None = None, wait_seconds: float = 0.0, on_routed: Callable[[], None] | None = None,
    ask_counts: AskCounts | None = None, quiet_seconds: float = 1.0,
) -> int:
    """Route every study that has been quiet for ``idle_seconds``, or whose instances match the counts
    a query peer gave after the last one came (``ask_counts``, :class:`dicomnode.query.counts.PacsCounts`);
    returns how many were routed.

    With a ``cache``, the headers of studies quiet for half of ``idle_seconds``, or whose counts are
    known, are read ahead into it. A study that becomes complete within ``wait_seconds`` (the sweep
    interval) is waited for and judged in this sweep, at the moment it is complete, instead of at the
    next one. ``on_routed`` is called as soon as each study is routed (to wake the workers before the
    sweep waits for the next).
    """
    counted: set[int] = set()
    known: set[int] = set()
    if ask_counts is not None:
        counted, known = _by_counts(sessions, ask_counts, quiet_seconds, wait_seconds)
    now = time.time()
    lead = max(idle_seconds / 2 if cache is not None else 0.0, min(wait_seconds, idle_seconds))
    keep_priors(sessions, utcnow() - dt.timedelta(seconds=idle_seconds))
    work = sorted(_candidates(sessions, utcnow() - dt.timedelta(seconds=idle_seconds - lead), counted,
                              known if cache is not None else ()),
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
    read = (cache if cache is not None else HeaderCache()).reader(candidate.study_id, candidate.all_files)
    plans = [plan_series(sid, [p for p, _ in files], rules, models.check_usable, read)
             for sid, files in candidate.files.items()]
    with session_scope(sessions) as session:
        study = session.get(Study, candidate.study_id, with_for_update=True)  # one sweeper per study, across processes
        if study is None or study.state != StudyState.RECEIVING or study.last_received_at != candidate.last:
            return False
        _apply(session, study, plans, models, len(candidate.all_files))
    if cache is not None:
        cache.drop(candidate.study_id)
    return True


def _apply(session: Session, study: Study, plans: list[SeriesPlan], models: InstalledModels,
           n_instances: int) -> None:
    study.completed_at = utcnow()
    suspensions: list[str] = []
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
            version = models.versions.get(rule.model)
            why = models.suspended.get(rule.model)
            if why is not None:  # no job, so no failure notice either: the reason is the study's status
                series.route_reason += f"; rule {rule.name} suspended: {why}"
                suspensions.append(why)
                continue
            if version is None:
                series.route_reason += f"; rule {rule.name} names unknown model {rule.model!r}"
                continue
            enqueue(session, series, rule.name, rule.model, version)
        series.routed_revision = series.revision
    session.flush()
    n_jobs = len(session.scalars(select(Job.id).join(Job.series).where(Series.study_id == study.id)).all())
    if n_jobs:
        study.state, study.state_reason = StudyState.ROUTED, f"routed: {n_jobs} job(s)" + "".join(
            f"; {why}" for why in dict.fromkeys(suspensions))
    else:
        study.state = StudyState.NO_MATCH
        study.state_reason = "nothing to do: " + " | ".join(
            f"series {s.series_number}: {s.route_reason}"  # the plan's reason, and any suspended rule's
            for s in (session.get(Series, p.series_id) for p in plans) if s is not None)
        record(session, AuditEvent.STUDY_NOT_ROUTED, Outcome.SUCCESS, actor="router",
               **study.subject(), reason=study.state_reason)
    log.info("study complete", extra=extra(stage="route", study_uid=study.study_uid, series=len(plans),
                                           jobs=n_jobs, state=study.state.value))
