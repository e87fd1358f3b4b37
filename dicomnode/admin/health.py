"""Liveness and readiness: is the process answering, and can it do its work now?"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.studies import disk_status
from dicomnode.settings import Settings


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Check]


def _database(sessions: sessionmaker[Session]) -> Check:
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return Check(ok=False, detail=f"database unreachable ({type(exc).__name__})")
    return Check(ok=True, detail="reachable")


def _spool(settings: Settings) -> Check:
    try:
        settings.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(dir=settings.spool_dir, prefix=".ready-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return Check(ok=False, detail=f"spool not writable ({exc.strerror or type(exc).__name__})")
    return Check(ok=True, detail="writable")


def _disk(settings: Settings) -> Check:
    disk = disk_status(settings)
    if not disk["accepting"]:
        return Check(ok=False, detail=str(disk["reason"]))
    return Check(ok=True, detail=f"{disk['free_mb']} MiB free (minimum {settings.min_free_disk_mb:g})")


def _models(models: Sequence[str] | None) -> Check:
    if models is None:
        return Check(ok=True, detail="this process runs no models")
    if not models:
        return Check(ok=False, detail="no model loaded")
    return Check(ok=True, detail="loaded: " + ", ".join(models))


def readiness(settings: Settings, sessions: sessionmaker[Session], models: Sequence[str] | None) -> Readiness:
    """Each check with its detail; ready only when every one passes."""
    checks = {"database": _database(sessions), "spool": _spool(settings), "disk": _disk(settings),
              "models": _models(models)}
    return Readiness(ready=all(c.ok for c in checks.values()), checks=checks)
