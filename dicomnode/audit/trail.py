"""Append-only writer: one audit row, in the caller's transaction."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.jobs.models import AuditRecord


def record(
    session: Session,
    event: AuditEvent,
    outcome: Outcome = Outcome.SUCCESS,
    *,
    actor: str = "",
    study_uid: str | None = None,
    patient_id: str | None = None,
    **detail: Any,
) -> AuditRecord:
    """Add an audit row to ``session``; it commits or rolls back with the change it records."""
    row = AuditRecord(
        event=event.value,
        outcome=outcome.value,
        actor=actor,
        study_uid=study_uid,
        patient_id=patient_id,
        detail=json.dumps(detail, sort_keys=True, default=str),
    )
    session.add(row)
    return row
