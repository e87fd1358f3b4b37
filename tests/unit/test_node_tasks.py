"""The node's periodic tasks (sweep, audit anchor, retention) run on a scheduler: one that fails, here on a
database that cannot be reached, is logged with its stage and returns, so that the scheduler runs it again
at its next interval and the node keeps running; the worker's loop and the PACS count questions likewise."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import pytest
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import node
from dicomnode.audit.bursts import BurstAuditor
from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.inference.registry import Registry
from dicomnode.pipeline import PipelineContext
from dicomnode.query.counts import PacsCounts
from dicomnode.settings import Settings
from dicomnode.store.completion import HeaderCache
from dicomnode.worker import Worker
from tests.conftest import make_settings
from tests.support.net import wait_for

T = TypeVar("T")


@pytest.fixture
def unreachable() -> Iterator[sessionmaker[Session]]:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/nothing")  # port 1: refused at once
    yield make_sessionmaker(engine)
    engine.dispose()


def _failed(caplog: pytest.LogCaptureFixture, message: str) -> logging.LogRecord:
    (record,) = [r for r in caplog.records if r.getMessage() == message]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert isinstance(record.exc_info[1], SQLAlchemyError), record.exc_info  # the database's failure, no other
    return record


@pytest.mark.parametrize("task", ["sweep", "anchor", "retention"])
def test_a_periodic_task_that_fails_is_logged_and_returns(task: str, settings: Settings, tmp_path: Path,
                                                          unreachable: sessionmaker[Session],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="dicomnode.node")
    configured = make_settings(settings.data_dir, retention_days=1)
    ctx = SimpleNamespace(settings=configured, sessions=unreachable,
                          registry=SimpleNamespace(manifests={}, unavailable={}))  # no model installed
    if task == "sweep":
        node._maintenance(ctx, frozenset({"receive"}), None, HeaderCache(2**20),  # type: ignore[arg-type]
                          BurstAuditor(unreachable, 1.0))
        stage = _failed(caplog, "sweep failed")
    elif task == "anchor":
        node._anchor(ctx, None)  # type: ignore[arg-type]
        stage = _failed(caplog, "audit anchor checkpoint failed")
    else:
        node._retention(ctx)  # type: ignore[arg-type]
        stage = _failed(caplog, "retention purge failed")
    assert getattr(stage, "ctx", None) == {"stage": {"sweep": "sweep", "anchor": "audit",
                                                      "retention": "retention"}[task]}


def test_a_worker_whose_database_fails_logs_it_and_goes_on_polling(
        settings: Settings, tmp_path: Path, unreachable: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    """The worker's loop survives a claim that fails: it logs the error and claims again after its poll,
    until it is stopped (and then it stops)."""
    caplog.set_level(logging.ERROR, logger="dicomnode.worker")
    configured = make_settings(settings.data_dir, worker_poll_seconds=0.05)
    worker = Worker(PipelineContext(settings=configured, sessions=unreachable,
                                    registry=Registry(tmp_path / "no-models", "cpu")))
    worker.start()
    try:
        wait_for(lambda: sum(r.getMessage() == "worker loop error" for r in caplog.records) >= 2, timeout=30,
                 msg="the worker's loop going on after a failed claim")
    finally:
        worker.stop(timeout=30)
    assert worker._thread is not None and not worker._thread.is_alive()
    errors = [r for r in caplog.records if r.getMessage() == "worker loop error"]
    assert all(isinstance(r.exc_info and r.exc_info[1], SQLAlchemyError) for r in errors)
    assert all(getattr(r, "ctx", None) == {"stage": "worker"} for r in errors)


def _within(seconds: float, call: Callable[[], T]) -> T:
    """``call()`` on a thread of its own, which must return within ``seconds`` (a deadlock fails the test,
    and the daemon thread it leaves behind does not hold pytest's exit)."""
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"no answer within {seconds} s: deadlocked"
    return box[0]


def test_a_question_for_pacs_counts_that_fails_is_logged_and_answers_the_sweep(
        settings: Settings, unreachable: sessionmaker[Session], caplog: pytest.LogCaptureFixture) -> None:
    """The sweep waits on the question's future: a failure ends it (without an exception for the sweep to
    trip on), is logged with its stage, and the study can be asked again."""
    caplog.set_level(logging.ERROR, logger="dicomnode.query.counts")
    counts = PacsCounts(settings, unreachable)
    try:
        asked = _within(30, lambda: counts(7))
        assert asked.result(timeout=30) is None
        wait_for(lambda: 7 not in counts.asking, timeout=30, msg="the question forgotten once answered")
        assert _within(30, lambda: counts(7)) is not asked  # asked afresh
    finally:
        counts.stop()
    errors = [r for r in caplog.records if r.getMessage() == "asking the PACS for counts failed"]
    assert errors and all(isinstance(r.exc_info and r.exc_info[1], SQLAlchemyError) for r in errors)
    assert all(getattr(r, "ctx", None) == {"stage": "query"} for r in errors)


def test_a_question_answered_before_it_is_registered_neither_deadlocks_nor_lingers(
        settings: Settings, unreachable: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """A question whose answer is in before the PACS counts register their callback (a study gone, no
    query peer, a database that refuses at once: the found deadlock) returns, and is forgotten, so the
    next sweep asks again; an answer that comes late does not forget a newer question."""
    counts = PacsCounts(settings, unreachable)
    answered: Future[None] = Future()
    answered.set_result(None)
    monkeypatch.setattr(counts.pool, "submit", lambda *_: answered)
    try:
        assert _within(30, lambda: counts(8)) is answered
        assert 8 not in counts.asking
        newer: Future[None] = Future()
        counts.asking[8] = newer
        counts._done(8, answered)  # the old question's callback, late
        assert counts.asking[8] is newer
    finally:
        counts.stop()
