"""Liveness and readiness: is the process answering, and can it do its work now?

A model that cannot run (:meth:`dicomnode.inference.registry.Registry.check`) makes the node
*degraded*, not down, while another model serves: ``ready`` stays true, ``degraded`` is true, and
``unavailable`` gives each such model's reason (also in the ``models`` check's detail). With no model
able to run, the node is not ready.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence

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
    degraded: bool = False  # ready, but some model cannot run (its rules are suspended)
    unavailable: dict[str, str] = {}  # model id -> why it cannot run


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


def _models(models: Sequence[str] | None, unavailable: Mapping[str, str]) -> Check:
    if models is None:
        return Check(ok=True, detail="this process runs no models")
    serving = [m for m in models if m not in unavailable]
    down = "".join(f"; model {m} unavailable: {why}" for m, why in sorted(unavailable.items()))
    if not serving:
        return Check(ok=False, detail=("no model can run" if models else "no model loaded") + down)
    return Check(ok=True, detail="loaded: " + ", ".join(serving) + down)


def readiness(settings: Settings, sessions: sessionmaker[Session], models: Sequence[str] | None,
              unavailable: Mapping[str, str] | None = None) -> Readiness:
    """Each check with its detail; ready only when every one passes; degraded when some model cannot run."""
    down = {m: why for m, why in (unavailable or {}).items() if models is not None and m in models}
    checks = {"database": _database(sessions), "spool": _spool(settings), "disk": _disk(settings),
              "models": _models(models, down)}
    ready = all(c.ok for c in checks.values())
    return Readiness(ready=ready, checks=checks, degraded=ready and bool(down), unavailable=down)
