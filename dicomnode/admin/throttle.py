"""Failed logins, slowed down per address and per user name, one audit row per burst.

A key (an address, or a user name) may fail ``free_failures`` times; each further failure makes the
next try wait twice as long (1 s, 2 s, 4 s ... ``max_delay``), and a try before then is refused at once
(429) without running PBKDF2, so that a password flood costs the node almost nothing. A burst ends after
``burst_seconds`` without a failure; :meth:`LoginThrottle.failed` says when a burst starts, which is
when the caller writes its one audit row.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class _Burst:
    failures: int
    started: float
    last: float


class LoginThrottle:
    def __init__(self, free_failures: int, max_delay: float, burst_seconds: float, *,
                 max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.free_failures = free_failures
        self.max_delay = max_delay
        self.burst_seconds = burst_seconds
        self.max_keys = max_keys
        self._clock = clock
        self._bursts: OrderedDict[str, _Burst] = OrderedDict()
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> _Burst | None:
        burst = self._bursts.get(key)
        if burst is not None and now - burst.last > self.burst_seconds:
            del self._bursts[key]
            return None
        return burst

    def _delay(self, failures: int) -> float:
        extra = failures - self.free_failures
        return 0.0 if extra < 0 else min(self.max_delay, 2.0 ** extra)

    def wait_seconds(self, keys: Iterable[str]) -> float:
        """How long the caller must wait before trying again with these keys (0: go ahead)."""
        now = self._clock()
        with self._lock:
            waits = [b.last + self._delay(b.failures) - now for k in keys if (b := self._live(k, now))]
        return max([0.0, *waits])

    def failed(self, keys: Iterable[str]) -> bool:
        """Count a failure against every key; True when it starts a burst for all of them (a new
        address trying a new name), so that rotating names from one address, or addresses against one
        name, is still one burst."""
        now = self._clock()
        started = True
        with self._lock:
            for key in keys:
                burst = self._live(key, now)
                if burst is None:
                    self._bursts[key] = _Burst(failures=1, started=now, last=now)
                else:
                    started = False
                    burst.failures += 1
                    burst.last = now
                    self._bursts.move_to_end(key)
            while len(self._bursts) > self.max_keys:  # a flood of made-up names cannot grow it without bound
                self._bursts.popitem(last=False)
        return started

    def failures(self, key: str) -> int:
        with self._lock:
            burst = self._live(key, self._clock())
        return burst.failures if burst else 0

    def succeeded(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._bursts.pop(key, None)
