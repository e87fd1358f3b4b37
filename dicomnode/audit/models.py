"""The audit trail's tables: the hash-chained rows and the ATNA sender's cursor."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from dicomnode.db import Base, utcnow


class AuditRecord(Base):
    """Append-only, hash-chained audit trail, written in the same transaction as the change it records.

    ``hash`` is SHA-256 over the row's content and ``prev_hash``, the hash of the row before it, so that
    editing, deleting or reordering rows breaks the chain (``dicomnode audit verify``). Database triggers
    refuse UPDATE and DELETE. Only this table (and the study rows) hold PHI.
    """

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(48), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128), default="")
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditCursor(Base):
    """How far the ATNA sender got: the id of the last audit row delivered to the repository."""

    __tablename__ = "audit_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_audit_id: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
