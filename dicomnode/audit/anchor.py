"""The audit trail's head, anchored outside the database, so that removing the newest rows shows.

The hash chain finds an edited, deleted or reordered row, but removing the *last* rows leaves a shorter
chain that is intact. A checkpoint (row count, id and hash of the newest row) is appended to the anchor
file every ``audit_anchor_seconds`` and when the node stops; ``dicomnode audit verify --anchor FILE``
then checks that the trail still holds, at each checkpoint's position, the row the checkpoint names.
Keep a copy of the file where the database's administrators cannot write (or ship it off the host).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.jobs.models import AuditRecord
from dicomnode.store.spool import make_private_dirs


@dataclass(frozen=True)
class Checkpoint:
    """The trail's head at one moment: how many rows, and the newest one's id and hash."""

    at: str
    rows: int
    head_id: int
    head_hash: str


def head(sessions: sessionmaker[Session]) -> Checkpoint:
    """The current head of the trail (rows 0 and an empty hash for an empty trail)."""
    with sessions() as session:  # the newest row first, then the rows up to it: appends may run meanwhile
        newest = session.execute(select(AuditRecord.id, AuditRecord.hash).order_by(AuditRecord.id.desc())
                                 .limit(1)).first()
        rows = int(session.scalar(select(func.count()).select_from(AuditRecord)
                                  .where(AuditRecord.id <= (newest[0] if newest else 0))) or 0)
    at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return Checkpoint(at=at, rows=rows, head_id=int(newest[0]) if newest else 0,
                      head_hash=str(newest[1]) if newest else "")


def write_checkpoint(sessions: sessionmaker[Session], path: Path) -> Checkpoint:
    """Append the current head to ``path`` (JSON lines, owner-only, fsynced) and return it."""
    checkpoint = head(sessions)
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (json.dumps(asdict(checkpoint), sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return checkpoint


def read_checkpoints(path: Path) -> list[Checkpoint]:
    """Every checkpoint in the anchor file, oldest first.

    Raises
    ------
    ValueError
        When a line is not a checkpoint (naming the line).
    """
    checkpoints = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            checkpoints.append(Checkpoint(**json.loads(line)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"anchor file line {number} is not a checkpoint") from exc
    return checkpoints
