"""A session that only reads never waits for a writer; a writer still takes SQLite's write lock at its start.

Before, every session began with BEGIN IMMEDIATE: a readiness probe, a metrics scrape, the peer check of
each association request and every console page queued behind any write (and behind each other), up to the
30 s busy timeout, after which readiness said "database unreachable".
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.health import readiness
from dicomnode.config_store import put_peer, runtime_peers
from dicomnode.db import session_scope, utcnow
from dicomnode.jobs.models import Study
from dicomnode.jobs.repository import claim, requeue_expired
from dicomnode.jobs.status import StudyState
from dicomnode.settings import Peer, Settings
from dicomnode.store.completion import InstalledModels, keep_priors, sweep
from tests.support.spooled import queue_job, spool
from tests.support.synthetic import make_series

T = TypeVar("T")
BOUND_SECONDS = 10.0  # a read answers at once; the defect waited for the 30 s busy timeout


@contextmanager
def write_lock(settings: Settings) -> Iterator[None]:
    """Another process's writer (a long retention purge, say): SQLite's write lock held until the block ends."""
    conn = sqlite3.connect(settings.db_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def within(seconds: float, call: Callable[[], T]) -> T:
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"waited more than {seconds:.0f} s for another writer"
    return box[0]


def test_reads_answer_while_a_writer_holds_the_database(settings: Settings,
                                                        sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        put_peer(session, Peer(ae_title="MODALITY", host="127.0.0.1"), user="test", address="test")
    with write_lock(settings):
        ready = within(BOUND_SECONDS, lambda: readiness(settings, sessions, None))
        assert ready.checks["database"].ok, ready.checks["database"].detail
        peers = within(BOUND_SECONDS, lambda: runtime_peers(settings, sessions))
        assert [p.ae_title for p in peers] == ["MODALITY"]

        def studies() -> list[str]:
            with sessions() as session:  # a plain session: what the console and the API read through
                return list(session.scalars(select(Study.study_uid)))

        assert within(BOUND_SECONDS, studies) == []


def test_a_writer_takes_the_write_lock_at_its_start(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """No read-to-write upgrade: a session_scope holds the lock before its first statement."""
    other = sqlite3.connect(settings.db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=0)
    try:
        with session_scope(sessions) as session:
            session.execute(text("SELECT 1"))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at the commit
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_periodic_writers_with_nothing_to_do_take_no_write_lock(settings: Settings,
                                                               sessions: sessionmaker[Session]) -> None:
    """The sweep (every 0.25 s), the lease check and the worker's claim looked for work inside a write
    transaction: with nothing to do they still took SQLite's write lock several times a second, and the
    group commit of received instances, finding it held, slept in the busy handler (1 ms and up)."""
    series = make_series(n_slices=2, rows=4, columns=4)
    spool(settings, sessions, series)  # a study still receiving: the sweep looks at it, and leaves it
    models = InstalledModels({}, lambda *_: None)
    with write_lock(settings):
        assert within(BOUND_SECONDS, lambda: sweep(sessions, 3600.0, [], models)) == 0
        assert within(BOUND_SECONDS, lambda: keep_priors(sessions, utcnow())) == 0
        assert within(BOUND_SECONDS, lambda: requeue_expired(sessions, 3)) == 0
        assert within(BOUND_SECONDS, lambda: claim(sessions, "worker-1", 30.0)) is None
    with sessions() as session:
        assert session.scalar(select(Study.state)) == StudyState.RECEIVING
    queue_job(sessions, str(series[0].SeriesInstanceUID))  # with work, the claim still takes it
    job = claim(sessions, "worker-1", 30.0)
    assert job is not None and job.series_uid == series[0].SeriesInstanceUID
