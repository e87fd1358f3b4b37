"""How many instances the PACS holds of a study: Study Root C-FIND at study and series level for
NumberOfStudyRelatedInstances and NumberOfSeriesRelatedInstances, asked of a query peer.

The completeness sweep (:mod:`dicomnode.store.completion`) asks through :class:`PacsCounts`, which the
node hands it: when a study starts arriving, when its received instances reach the count the peer gave
before the last one came, and when it has been quiet for ``query_quiet_seconds``. Each question runs on a
small pool of threads of its own, never on the receive path; the sweep waits for one at most a sweep
interval. The answer goes into the study's and its series' rows (``pacs_instances``, ``pacs_asked_at``,
``pacs_note``), where the sweep compares it with what arrived, and the question into the audit trail
(DICOM Query, with the identifier as the peer saw it). The identifiers carry UIDs only.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.config_store import query_peers
from dicomnode.db import session_scope, utcnow
from dicomnode.jobs.models import Job, Series, Study
from dicomnode.log import extra
from dicomnode.query.scu import FIND, Finder, FindResult, encoded_query, identifier
from dicomnode.results.files import result_series_uids
from dicomnode.settings import Peer, Settings

log = logging.getLogger(__name__)


def study_identifier(study_uid: str) -> Dataset:
    return identifier("STUDY", StudyInstanceUID=study_uid, NumberOfStudyRelatedSeries="",
                      NumberOfStudyRelatedInstances="")


def series_identifier(study_uid: str) -> Dataset:
    return identifier("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="", NumberOfSeriesRelatedInstances="")


@dataclass
class Counts:
    """A peer's counts for one study: None when it holds none of it or did not answer (``note`` says which)."""

    peer: str
    study: int | None = None
    series: dict[str, int] | None = field(default_factory=dict)  # None: as the peer said before
    note: str = ""


def _number(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def ask(settings: Settings, peer: Peer, study_uid: str, known: int | None = None,
        own: Callable[[], Collection[str]] = frozenset) -> tuple[Counts, list[tuple[Dataset, FindResult]]]:
    """The counts ``peer`` gives for ``study_uid``, and each query with its result (for the audit trail).
    When the study count equals ``known`` (the peer's last answer) and the node has written no result into
    the study, the series are not asked again (``Counts.series`` is then None: unchanged), so that a
    confirmation is one C-FIND. Else the study's count is the sum of its series' counts, less the series
    that ``own()`` names (the node's own results delivered into the study), asked after each answer: a
    result is written before it is sent, so a result the peer counted is named then, even while the node
    is sending it."""
    counts = Counts(peer.ae_title)
    queries: list[tuple[Dataset, FindResult]] = []
    with Finder(settings, peer) as finder:
        identifier = study_identifier(study_uid)
        study = finder.find(identifier)
        queries.append((identifier, study))
        if not study.ok:
            counts.note = study.error
        elif not study.answers:
            counts.note = f"{peer.ae_title} does not hold the study"
        else:
            counts.study = _number(study.answers[0], "NumberOfStudyRelatedInstances")
            if counts.study is None:
                counts.note = f"{peer.ae_title} did not give NumberOfStudyRelatedInstances"
        if counts.study is None or (counts.study == known and not own()):
            counts.series = None if counts.study is not None else {}
            return counts, queries
        identifier = series_identifier(study_uid)
        series = finder.find(identifier)
        queries.append((identifier, series))
    if not series.ok:
        counts.note = series.error
        counts.study = None
    for answer in series.answers:
        n = _number(answer, "NumberOfSeriesRelatedInstances")
        uid = str(answer.get("SeriesInstanceUID", ""))
        if n is not None and uid and counts.series is not None:
            counts.series[uid] = n
    if counts.study is not None and counts.series is not None:  # the node's own results are not the study's
        ours = set(own())
        counts.study = sum(n for uid, n in counts.series.items() if uid not in ours)
    return counts, queries


def own_series(session: Session, results_dir: Path, study_id: int) -> set[str]:
    """The series UIDs of the results the node has written for the study's jobs (sent or about to be)."""
    jobs = session.scalars(select(Job.id).join(Job.series).where(Series.study_id == study_id)).all()
    return {uid for job_id in jobs for uid in result_series_uids(results_dir, job_id)}


def audit_queries(session: Session, peer: Peer, queries: list[tuple[Dataset, FindResult]], *,
                  study_uid: str | None, patient_id: str | None = None, purpose: str) -> None:
    """One DICOM Query row per C-FIND: the identifier as the peer saw it, its answer count, or why it failed."""
    for asked, result in queries:
        record(session, AuditEvent.QUERY, Outcome.SUCCESS if result.ok else Outcome.MINOR_FAILURE,
               actor=peer.ae_title, study_uid=study_uid, patient_id=patient_id, sop_class=FIND,
               query=encoded_query(asked), level=str(asked.get("QueryRetrieveLevel", "")),
               purpose=purpose, answers=len(result.answers), address=peer.host,
               status=f"0x{result.status:04X}" if result.status is not None else "",
               reason=result.error or f"{len(result.answers)} answer(s)")


def _save(session: Session, study: Study, counts: Counts, asked_at: dt.datetime) -> None:
    study.pacs_instances, study.pacs_asked_at, study.pacs_note = counts.study, asked_at, counts.note
    if counts.series is None:  # the study count is unchanged: so are the series' (a series new since has none)
        return
    for series in session.scalars(select(Series).where(Series.study_id == study.id)):
        series.pacs_instances = counts.series.get(series.series_uid)


def pick_peer(peers: tuple[Peer, ...], calling_ae: str) -> Peer | None:
    """The query peer that sent the study, else the first one (the PACS when it is a query peer)."""
    return next((p for p in peers if p.ae_title == calling_ae), peers[0] if peers else None)


class PacsCounts:
    """Asks the query peers for studies' counts, on threads of its own (at most one question per study
    at a time); what the sweep of :mod:`dicomnode.store.completion` is handed as ``ask_counts``."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], threads: int = 2) -> None:
        self.settings, self.sessions = settings, sessions
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="pacs-counts")
        self.lock = threading.Lock()
        self.asking: dict[int, Future[None]] = {}

    def enabled(self) -> bool:
        return bool(query_peers(self.settings, self.sessions))

    def __call__(self, study_id: int) -> Future[None]:
        """Ask for ``study_id``'s counts now (or join the question in flight); returns at once."""
        with self.lock:
            future = self.asking.get(study_id)
            if future is not None:
                return future
            future = self.asking[study_id] = self.pool.submit(self._ask, study_id)
        # outside the lock: a question already answered runs its callback here, at once, and the
        # callback takes the lock (inside it, the sweep's thread deadlocked on a question that failed fast)
        future.add_done_callback(lambda done: self._done(study_id, done))
        return future

    def _done(self, study_id: int, future: Future[None]) -> None:
        with self.lock:
            if self.asking.get(study_id) is future:  # not a newer question for the same study
                del self.asking[study_id]

    def _ask(self, study_id: int) -> None:
        try:
            with self.sessions() as session:
                row = session.get(Study, study_id)
                if row is None:
                    return
                study_uid, calling_ae = row.study_uid, row.calling_ae
                # the series are asked again unless each series that arrived has its count already
                known = row.pacs_instances if all(s.pacs_instances is not None for s in row.series) else None
            peer = pick_peer(query_peers(self.settings, self.sessions), calling_ae)
            if peer is None:
                return
            asked_at = utcnow()
            counts, queries = ask(self.settings, peer, study_uid, known, partial(self._own, study_id))
            with session_scope(self.sessions) as session:
                study = session.get(Study, study_id)
                if study is None:
                    return
                _save(session, study, counts, asked_at)
                audit_queries(session, peer, queries, study_uid=study_uid, purpose="instance counts")
            log.info("PACS counts", extra=extra(stage="query", study_uid=study_uid, peer=peer.ae_title,
                                                instances=counts.study if counts.study is not None else "-",
                                                series=len(counts.series) if counts.series is not None
                                                else "unchanged", note=counts.note or "-"))
        except Exception:
            log.exception("asking the PACS for counts failed", extra=extra(stage="query"))

    def _own(self, study_id: int) -> set[str]:
        with self.sessions() as session:
            return own_series(session, self.settings.results_dir, study_id)

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


AskCounts = Callable[[int], "Future[None]"]
