"""Fixtures: settings on a temporary data dir, a migrated SQLite database, the shared real data."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.log import STAGES
from dicomnode.migrate import upgrade
from dicomnode.settings import Settings
from tests.support.logs import logging_kept
from tests.support.peers import REPO, Orthanc
from tests.support.postgres import Postgres

_DB_COUNTER = itertools.count()

SHARED_DATA = Path(os.environ.get("DICOMNODE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DICOMNODE_") and key != "DICOMNODE_SHARED_DATA":
            monkeypatch.delenv(key)


class _Stageless(logging.Handler):
    """Keeps every record of the node's own loggers that does not name one of its stages."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        stage = (getattr(record, "ctx", None) or {}).get("stage")
        if stage not in STAGES:
            self.found.append(f"{record.name} {record.levelname} {record.msg!r}: stage {stage!r}")


_STAGELESS = _Stageless()


@pytest.fixture(autouse=True)
def _every_record_names_its_stage() -> Iterator[None]:
    """README: application logs carry stage names. Every record the node logs in the test's process, at the
    node's default level (INFO) and above, names one of :data:`dicomnode.log.STAGES`: a record without one,
    or with another word, fails the test in which it was logged."""
    node = logging.getLogger("dicomnode")
    level = node.level
    if node.getEffectiveLevel() > logging.INFO:
        node.setLevel(logging.INFO)
    _STAGELESS.found.clear()
    node.addHandler(_STAGELESS)
    try:
        yield
    finally:
        node.removeHandler(_STAGELESS)
        node.setLevel(level)
    found, _STAGELESS.found[:] = list(_STAGELESS.found), []
    if found:
        pytest.fail("records without one of the node's stages: " + "; ".join(sorted(set(found))[:10]),
                    pytrace=False)


@pytest.fixture(autouse=True)
def _logging_put_back() -> Iterator[None]:
    """What a test does to the process's logging (setup_logging, a quiet CLI command run in-process) stays
    in that test (:func:`tests.support.logs.logging_kept`)."""
    with logging_kept():
        yield


@pytest.fixture(autouse=True)
def _strict_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strict about what we write (pydicom raises on invalid values we set), lenient about what we read
    (as ``dicomnode.log.setup_logging`` makes the node)."""
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.RAISE)
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.IGNORE)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real third-party DICOM not found at {SHARED_DATA} (../shared/data)")
    return SHARED_DATA


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings.load(None, data_dir=data_dir, **overrides)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", study_idle_seconds=0.5)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    # not under pytest's tmp folder: that one is private to root, and PostgreSQL runs as postgres
    folder = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
    server = Postgres(folder).start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated, empty database on each supported backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"t{os.getpid()}_{next(_DB_COUNTER)}")
    upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield pacs
    pacs.stop()
