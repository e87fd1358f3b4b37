"""The migrations create exactly the schema the ORM describes."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import dicomnode.jobs.models  # noqa: F401 (registers every table on Base.metadata)
from dicomnode.db import Base, make_engine
from dicomnode.migrate import upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("postgres").create_database(f"mig_{tmp_path.name[-12:].lower()}"))


def test_upgrade_head_matches_models(empty_db: str) -> None:
    url = empty_db
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == []
    assert {"study", "series", "instance", "job", "job_event", "delivery", "audit"} <= tables


def test_upgrade_is_repeatable(empty_db: str) -> None:
    upgrade(empty_db)
    upgrade(empty_db)
