"""Workers learn of new jobs at once: PostgreSQL LISTEN/NOTIFY between processes' threads."""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.jobs.notify import Listener, announce
from dicomnode.migrate import upgrade
from tests.support.postgres import Postgres


def test_announce_wakes_a_listener_in_another_connection(postgres: Postgres) -> None:
    url = postgres.create_database("notify_test")
    upgrade(url)
    engine = make_engine(url)
    sessions: sessionmaker[Session] = make_sessionmaker(engine)
    wake = threading.Event()
    listener = Listener(url, wake)
    listener.start()
    try:
        assert wake.wait(30), "the listener sets the event once it listens"
        wake.clear()
        announce(sessions, None)  # no local event: only the notification can wake it
        assert wake.wait(30), "NOTIFY did not reach the listener"
    finally:
        listener.stop()
        engine.dispose()
    assert not _listening(), "stop() returned with the listener still running"


def _listening() -> bool:
    return any(t.name == "dicomnode-listen" and t.is_alive() for t in threading.enumerate())


def test_a_listener_whose_connection_drops_says_so_and_listens_again(postgres: Postgres,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    url = postgres.create_database("notify_drop")
    upgrade(url)
    engine = make_engine(url)
    sessions: sessionmaker[Session] = make_sessionmaker(engine)
    wake = threading.Event()
    listener = Listener(url, wake)
    caplog.set_level(logging.WARNING, logger="dicomnode.jobs.notify")
    listener.start()
    try:
        assert wake.wait(30), "the listener sets the event once it listens"
        wake.clear()
        with engine.begin() as conn:  # as a database restart would: the listening backend goes
            ended = conn.execute(text("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()) AS t")).scalar()
        assert ended == 1
        assert wake.wait(30), "the listener did not listen again"  # set once it listens again
        lost = [r for r in caplog.records if r.getMessage() == "job notifications lost; reconnecting"]
        assert len(lost) == 1 and getattr(lost[0], "ctx", None) == {"stage": "worker"}
        wake.clear()
        announce(sessions, None)
        assert wake.wait(30), "NOTIFY did not reach the listener after it reconnected"
    finally:
        listener.stop()
        engine.dispose()
    assert not _listening()


def test_announce_sets_the_local_event_on_sqlite(sessions: sessionmaker[Session]) -> None:
    wake = threading.Event()
    announce(sessions, wake)
    assert wake.is_set()
