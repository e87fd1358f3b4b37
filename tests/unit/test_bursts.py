"""A burst of refusals is one audit row at once and one closing row with the count."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.models import AuditRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows(sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    with sessions() as session:
        return [json.loads(r.detail) | {"event": r.event}
                for r in session.scalars(select(AuditRecord).order_by(AuditRecord.id))]


def test_a_flood_is_two_rows_with_its_count(sessions: sessionmaker[Session]) -> None:
    clock = Clock()
    auditor = BurstAuditor(sessions, burst_seconds=5.0, clock=clock)
    firsts = [auditor.refused(AuditEvent.ASSOCIATION_REJECTED, "unknown-ae:10.0.0.9", actor="EVIL", address="10.0.0.9")
              for _ in range(100)]
    assert firsts == [True] + [False] * 99
    assert [r["burst"] for r in rows(sessions)] == ["first"]

    clock.now += 4.0
    assert auditor.flush() == 0  # not quiet long enough yet
    clock.now += 1.5
    assert auditor.flush() == 1

    written = rows(sessions)
    assert [(r["burst"], r["count"]) for r in written] == [("first", 1), ("ended", 99)]
    assert all(r["event"] == "association_rejected" and r["address"] == "10.0.0.9" for r in written)


def test_keys_are_separate_bursts_and_a_quiet_key_starts_a_new_one(sessions: sessionmaker[Session]) -> None:
    clock = Clock()
    auditor = BurstAuditor(sessions, burst_seconds=5.0, clock=clock)
    assert auditor.refused(AuditEvent.ASSOCIATION_REJECTED, "a", address="10.0.0.1")
    assert auditor.refused(AuditEvent.ASSOCIATION_REJECTED, "b", address="10.0.0.2")
    assert not auditor.refused(AuditEvent.ASSOCIATION_REJECTED, "a", address="10.0.0.1")
    clock.now += 6.0
    assert auditor.refused(AuditEvent.ASSOCIATION_REJECTED, "a", address="10.0.0.1")  # closes a's burst first

    written = rows(sessions)
    assert [(r["burst"], r["count"], r["address"]) for r in written] == [
        ("first", 1, "10.0.0.1"), ("first", 1, "10.0.0.2"), ("ended", 1, "10.0.0.1"), ("first", 1, "10.0.0.1")]
    assert auditor.flush(everything=True) == 2  # b (one refusal: no closing row) and the new a
    assert len(rows(sessions)) == 4


def test_burst_seconds_must_be_positive(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="burst_seconds must be positive"):
        BurstAuditor(sessions, burst_seconds=0)


def test_a_refusal_exactly_burst_seconds_after_the_last_is_still_the_same_burst(
        sessions: sessionmaker[Session]) -> None:
    """A burst ends after burst_seconds *without* a refusal: one that comes exactly then still belongs to it
    (and a flush at that instant closes nothing), one a moment later starts the next."""
    clock = Clock()
    auditor = BurstAuditor(sessions, burst_seconds=5.0, clock=clock)  # 100.0 and 5.0: exact in binary
    assert auditor.refused(AuditEvent.ASSOCIATION_REJECTED, "k", actor="EVIL") is True
    clock.now += 5.0
    assert auditor.flush() == 0
    assert auditor.refused(AuditEvent.ASSOCIATION_REJECTED, "k", actor="EVIL") is False
    clock.now += 5.25
    assert auditor.refused(AuditEvent.ASSOCIATION_REJECTED, "k", actor="EVIL") is True
    assert [(r["burst"], r["count"]) for r in rows(sessions)] == [("first", 1), ("ended", 1), ("first", 1)]
