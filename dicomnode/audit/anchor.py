"""The audit trail's head, anchored outside the database, so that removing the newest rows shows.

The hash chain finds an edited, deleted or reordered row, but removing the *last* rows leaves a shorter
chain that is intact. A checkpoint (row count, id and hash of the newest row) is appended to the anchor
file every ``audit_anchor_seconds`` and when the node stops; ``dicomnode audit verify --anchor FILE``
then checks that the trail still holds, at each checkpoint's position, the row the checkpoint names.
Keep a copy of the file where the database's administrators cannot write (or ship it off the host).

With an ATNA audit repository configured, each checkpoint also goes out in the syslog stream, as an
"Audit Log Used" message whose participant object (the trail) carries it (:func:`checkpoint_message`
in :mod:`dicomnode.audit.atna`). ``--anchor`` reads either file: the anchor file's JSON lines, or the
messages a site's syslog collector kept (raw, as received; other audit messages are skipped).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.files import make_private_dirs

CHECKPOINT_DETAIL = "dicomnode-audit-checkpoint"  # ParticipantObjectDetail type: base64 of the JSON line
_AUDIT_MESSAGE = re.compile(r"<AuditMessage\b.*?</AuditMessage>", re.DOTALL)


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
        os.write(fd, (checkpoint_line(checkpoint) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return checkpoint


def checkpoint_line(checkpoint: Checkpoint) -> str:
    """The checkpoint as one JSON line (the anchor file's format, also carried by the ATNA message)."""
    return json.dumps(asdict(checkpoint), sort_keys=True)


def _from_audit_message(xml: str) -> Checkpoint | None:
    """The checkpoint an "Audit Log Used" message carries, or None for any other audit message."""
    for detail in ET.fromstring(xml).iterfind("ParticipantObjectIdentification/ParticipantObjectDetail"):
        if detail.get("type") == CHECKPOINT_DETAIL:
            return Checkpoint(**json.loads(base64.b64decode(detail.get("value", ""), validate=True)))
    return None


def _from_syslog(text: str) -> list[Checkpoint]:
    checkpoints = []
    for number, match in enumerate(_AUDIT_MESSAGE.finditer(text), start=1):
        try:
            found = _from_audit_message(match.group())
        except (TypeError, ValueError, ET.ParseError, binascii.Error) as exc:
            raise ValueError(f"audit message {number} in the file does not parse") from exc
        if found is not None:
            checkpoints.append(found)
    return checkpoints


def read_checkpoints(path: Path) -> list[Checkpoint]:
    """Every checkpoint in ``path``, in the order written: an anchor file (JSON lines), or syslog
    messages collected from the ATNA stream (other audit messages, and any text around them, skipped).

    Raises
    ------
    ValueError
        When a line is not a checkpoint, or a message does not parse (naming which).
    """
    text = path.read_text(errors="replace")
    if "<AuditMessage" in text:
        return _from_syslog(text)
    checkpoints = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            checkpoints.append(Checkpoint(**json.loads(line)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"anchor file line {number} is not a checkpoint") from exc
    return checkpoints
