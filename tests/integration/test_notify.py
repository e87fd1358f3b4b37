"""Workers learn of new jobs at once: PostgreSQL LISTEN/NOTIFY between processes' threads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.jobs.notify import Listener, announce
from dicomnode.migrate import upgrade
from tests.support.postgres import Postgres


@dataclass
class _Listening:
    engine: Engine
    sessions: sessionmaker[Session]
    wake: threading.Event


@contextmanager
def _listening_on(postgres: Postgres, name: str) -> Iterator[_Listening]:
    """A migrated database and a started Listener that listens already (its event cleared); on leaving,
    the listener is stopped and must have ended."""
    url = postgres.create_database(name)
    upgrade(url)
    engine = make_engine(url)
    wake = threading.Event()
    listener = Listener(url, wake)
    listener.start()
    try:
        assert wake.wait(30), "the listener sets the event once it listens"
        wake.clear()
        yield _Listening(engine, make_sessionmaker(engine), wake)
    finally:
        listener.stop()
        engine.dispose()
    assert not _listening(), "stop() returned with the listener still running"


def _listening() -> bool:
    return any(t.name == "dicomnode-listen" and t.is_alive() for t in threading.enumerate())


def test_announce_wakes_a_listener_in_another_connection(postgres: Postgres) -> None:
    with _listening_on(postgres, "notify_test") as on:
        announce(on.sessions, None)  # no local event: only the notification can wake it
        assert on.wake.wait(30), "NOTIFY did not reach the listener"


def test_a_listener_whose_connection_drops_says_so_and_listens_again(postgres: Postgres,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicomnode.jobs.notify")
    with _listening_on(postgres, "notify_drop") as on:
        with on.engine.begin() as conn:  # as a database restart would: the listening backend goes
            ended = conn.execute(text("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()) AS t")).scalar()
        assert ended == 1
        assert on.wake.wait(30), "the listener did not listen again"  # set once it listens again
        lost = [r for r in caplog.records if r.getMessage() == "job notifications lost; reconnecting"]
        assert len(lost) == 1 and getattr(lost[0], "ctx", None) == {"stage": "worker"}
        on.wake.clear()
        announce(on.sessions, None)
        assert on.wake.wait(30), "NOTIFY did not reach the listener after it reconnected"


def test_announce_sets_the_local_event_on_sqlite(sessions: sessionmaker[Session]) -> None:
    wake = threading.Event()
    announce(sessions, wake)
    assert wake.is_set()


def test_a_notify_that_fails_is_logged_and_the_local_event_still_set(caplog: pytest.LogCaptureFixture) -> None:
    """A database that cannot be reached for the NOTIFY: the workers of this process are woken all the same,
    the sweep says that the others find the job by polling, and nothing is raised into the sweep."""
    caplog.set_level(logging.WARNING, logger="dicomnode.jobs.notify")
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/nothing")  # port 1: refused at once
    wake = threading.Event()
    try:
        announce(make_sessionmaker(engine), wake)
    finally:
        engine.dispose()
    assert wake.is_set()
    said = [r for r in caplog.records if r.getMessage().startswith("could not notify workers")]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert getattr(said[0], "ctx", None) == {"stage": "sweep"}
