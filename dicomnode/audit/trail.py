"""Append-only, hash-chained audit writer and its verifier.

Each row's hash covers its content and the previous row's hash. Rows are chained in id order: on SQLite
every transaction starts with BEGIN IMMEDIATE (one writer at a time); on PostgreSQL a transaction-scoped
advisory lock serialises appends, so the chain never forks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.anchor import Checkpoint
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.models import AuditRecord
from dicomnode.db import utcnow

GENESIS = "0" * 64
_CHAIN_LOCK = 0x64636D6E  # "dcmn": the PostgreSQL advisory lock key of the audit chain


def _timestamp(at: dt.datetime) -> str:
    if at.tzinfo is None:  # SQLite returns naive datetimes; the node only ever writes UTC
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_hash(row: AuditRecord, prev_hash: str) -> str:
    """SHA-256 over the row's content and the previous row's hash."""
    content = [_timestamp(row.at), row.event, row.outcome, row.actor, row.study_uid, row.patient_id,
               row.patient_name, row.detail, prev_hash]
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})


def record(
    session: Session,
    event: AuditEvent,
    outcome: Outcome = Outcome.SUCCESS,
    *,
    actor: str = "",
    study_uid: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    **detail: Any,
) -> AuditRecord:
    """Append an audit row in ``session``'s transaction; it commits or rolls back with the change it records."""
    session.flush()  # rows added earlier in this transaction take their place in the chain first
    _lock_chain(session)
    prev = session.scalar(select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1)) or GENESIS
    row = AuditRecord(at=utcnow(), event=event.value, outcome=outcome.value, actor=actor, study_uid=study_uid,
                      patient_id=patient_id or None, patient_name=patient_name or None,
                      detail=json.dumps(detail, sort_keys=True, default=str))
    row.prev_hash = prev
    row.hash = row_hash(row, prev)
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class Verification:
    ok: bool
    rows: int
    first_bad_id: int | None = None
    reason: str = ""


def _rows(sessions: sessionmaker[Session], batch: int = 1000) -> Iterator[AuditRecord]:
    last = 0
    while True:
        with sessions() as session:
            rows = session.scalars(select(AuditRecord).where(AuditRecord.id > last)
                                   .order_by(AuditRecord.id).limit(batch)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def verify(sessions: sessionmaker[Session], anchors: Sequence[Checkpoint] = ()) -> Verification:
    """Walk the chain; report the first row whose content or link does not hold.

    With ``anchors`` (checkpoints from the anchor file), the row at each checkpoint's position must be
    the one it names, and the trail must be at least as long as every checkpoint: a trail whose newest
    rows were removed is reported with the missing range.
    """
    pending = sorted((a for a in anchors if a.rows > 0), key=lambda a: a.rows)
    expected_prev, count, last_id = GENESIS, 0, 0
    for row in _rows(sessions):
        if row.prev_hash != expected_prev:
            return Verification(False, count, row.id, "link broken: a row before it was deleted, inserted "
                                                      "or moved")
        if row_hash(row, row.prev_hash) != row.hash:
            return Verification(False, count, row.id, "content does not match its hash: the row was edited")
        expected_prev, count, last_id = row.hash, count + 1, row.id
        while pending and pending[0].rows == count:
            anchor = pending.pop(0)
            if (anchor.head_id, anchor.head_hash) != (row.id, row.hash):
                return Verification(False, count, row.id, f"row {count} is not the row the anchor of "
                                                          f"{anchor.at} names: the trail was rewritten")
    if pending:
        anchor = pending[-1]
        return Verification(False, count, last_id + 1,
                            f"trail shorter than its anchor of {anchor.at}: rows {count + 1} to {anchor.rows} "
                            f"(ids {last_id + 1} to {anchor.head_id}) are missing")
    return Verification(True, count)


def export_rows(sessions: sessionmaker[Session], since: dt.datetime | None, until: dt.datetime | None
                ) -> list[AuditRecord]:
    with sessions() as session:
        query = select(AuditRecord).order_by(AuditRecord.id)
        if since is not None:
            query = query.where(AuditRecord.at >= since)
        if until is not None:
            query = query.where(AuditRecord.at < until)
        return list(session.scalars(query))


def as_dict(row: AuditRecord) -> dict[str, Any]:
    return {"id": row.id, "at": _timestamp(row.at), "event": row.event, "outcome": row.outcome,
            "actor": row.actor, "study_uid": row.study_uid, "patient_id": row.patient_id,
            "patient_name": row.patient_name, "detail": json.loads(row.detail), "prev_hash": row.prev_hash,
            "hash": row.hash}
