"""Apply the Alembic migrations (``alembic/``, in a wheel ``dicomnode/_data/alembic/``) to the configured database."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command
from dicomnode.resources import alembic_dir


def alembic_config(url: str) -> Config:
    scripts = alembic_dir()
    if not (scripts / "env.py").is_file():
        raise FileNotFoundError(f"Alembic scripts not found at {scripts}: this installation of dicomnode is "
                                "incomplete (a wheel carries them in dicomnode/_data/alembic)")
    config = Config()
    config.set_main_option("script_location", str(scripts))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating the SQLite file if needed)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
