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
from dicomnode.db import session_scope
from dicomnode.jobs.models import Study
from dicomnode.settings import Peer, Settings

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
    assert not thread.is_alive(), f"a read waited more than {seconds:.0f} s for a writer"
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
