"""What an attacker with database access could do to the audit trail (tests of its verification)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope


def tamper(sessions: sessionmaker[Session], *statements: str) -> None:
    """Lift the append-only triggers, then run ``statements`` (SQL that changes rows)."""
    with session_scope(sessions) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("ALTER TABLE audit DISABLE TRIGGER audit_append_only"))
        else:
            session.execute(text("DROP TRIGGER audit_no_update"))
            session.execute(text("DROP TRIGGER audit_no_delete"))
        for statement in statements:
            session.execute(text(statement))
