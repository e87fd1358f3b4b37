"""Refusals audited per burst: the first refusal of a burst is one row at once, the rest are counted.

A flood (an unknown AE calling 100 times, 60 failed TLS handshakes, a STOW-RS body of 10,000 bad parts)
must neither go unaudited nor fill the trail. For each key (what was refused, from which address or calling
AE) the first refusal writes its audit row immediately, with ``burst="first"``; the refusals that follow
within ``burst_seconds`` of the previous one are only counted. When the burst ends (quiet for
``burst_seconds``: found by :meth:`BurstAuditor.flush`, which the node's scheduler calls, or by the next
refusal of that key) one more row records how many followed (``burst="ended"``, ``count``). A burst is thus
at most two rows, each with its count, and nothing refused goes unrecorded. Login failures have their own
throttle (:mod:`dicomnode.admin.throttle`), which follows the same rule.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope

MAX_KEYS = 10_000  # bursts followed at once; the oldest is closed (its row written) beyond that


@dataclass
class _Burst:
    event: AuditEvent
    outcome: Outcome
    actor: str
    detail: dict[str, Any]
    first: float
    last: float
    further: int = 0
    detail_last: dict[str, Any] = field(default_factory=dict)


class BurstAuditor:
    """One audit row per burst of refusals with the same key, and a closing row with the count.

    Parameters
    ----------
    sessions
        Where the rows go (each in its own transaction).
    burst_seconds
        A burst ends after this long without a refusal of its key.
    clock
        Monotonic seconds (a test may pass its own).
    """

    def __init__(self, sessions: sessionmaker[Session], burst_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be positive, not {burst_seconds}")
        self.sessions = sessions
        self.burst_seconds = burst_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._bursts: OrderedDict[str, _Burst] = OrderedDict()

    def refused(self, event: AuditEvent, key: str, *, actor: str = "",
                outcome: Outcome = Outcome.MAJOR_FAILURE, **detail: Any) -> bool:
        """Count one refusal of ``key``; write its row when it starts a burst. True when it did.

        ``detail`` must hold no patient data beyond what the audit trail may hold (it is the trail).
        """
        now = self.clock()
        ended: list[_Burst] = []
        with self._lock:
            burst = self._bursts.get(key)
            if burst is not None and now - burst.last > self.burst_seconds:
                ended.append(self._bursts.pop(key))
                burst = None
            if burst is not None:
                burst.further += 1
                burst.last = now
                burst.detail_last = detail
                self._bursts.move_to_end(key)
            else:
                self._bursts[key] = _Burst(event, outcome, actor, detail, first=now, last=now)
                while len(self._bursts) > MAX_KEYS:
                    ended.append(self._bursts.popitem(last=False)[1])
        self._close(ended)
        if burst is None:
            with session_scope(self.sessions) as session:
                record(session, event, outcome, actor=actor, burst="first", count=1,
                       burst_seconds=self.burst_seconds, **detail)
            return True
        return False

    def flush(self, *, everything: bool = False) -> int:
        """Write the closing row of every burst that has ended (all of them with ``everything``)."""
        now = self.clock()
        with self._lock:
            done = [k for k, b in self._bursts.items() if everything or now - b.last > self.burst_seconds]
            ended = [self._bursts.pop(k) for k in done]
        self._close(ended)
        return len(ended)

    def _close(self, ended: list[_Burst]) -> None:
        closing = [b for b in ended if b.further]  # a burst of one refusal is its first row alone
        if not closing:
            return
        with session_scope(self.sessions) as session:
            for burst in closing:
                record(session, burst.event, burst.outcome, actor=burst.actor, burst="ended",
                       count=burst.further, seconds=round(burst.last - burst.first, 3),
                       **(burst.detail_last or burst.detail))
