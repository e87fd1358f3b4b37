"""Workers learn of new jobs at once: PostgreSQL LISTEN/NOTIFY between processes' threads."""

from __future__ import annotations

import threading

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


def test_announce_sets_the_local_event_on_sqlite(sessions: sessionmaker[Session]) -> None:
    wake = threading.Event()
    announce(sessions, wake)
    assert wake.is_set()
