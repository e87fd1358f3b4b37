"""The node's periodic tasks (sweep, audit anchor, retention) run on a scheduler: one that fails, here on a
database that cannot be reached, is logged with its stage and returns, so that the scheduler runs it again
at its next interval and the node keeps running."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import node
from dicomnode.audit.bursts import BurstAuditor
from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.settings import Settings
from dicomnode.store.completion import HeaderCache
from tests.conftest import make_settings


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
