"""The audit trail as a test reads it from the database."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord


def audit_rows(sessions: sessionmaker[Session], event: str) -> list[AuditRecord]:
    """The rows of ``event``, oldest first."""
    with sessions() as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.event == event).order_by(AuditRecord.id)))
