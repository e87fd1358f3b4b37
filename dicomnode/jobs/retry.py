"""Retries are a pure policy: (attempts so far, the error) -> retry after a delay, or give up.

Transient failures (no association, a timeout, the PACS out of resources 0xA7xx, a database that is
busy, a full disk) are retried with exponential backoff and jitter, up to ``max_attempts``. Permanent
failures (the PACS rejected the association or the instance with 0xA9xx/0xCxxx, a result that cannot be
built, a model that is not there) are never retried: the job goes to the dead letter with its reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from dicomnode.errors import SendError, StoreError


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_seconds: float
    reason: str


def is_transient(error: BaseException) -> bool:
    """Could the same work succeed later without anyone changing anything?"""
    if isinstance(error, SendError):
        return error.retryable
    return isinstance(error, (StoreError, OperationalError, TimeoutError, ConnectionError))


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 5.0
    factor: float = 2.0
    max_delay_seconds: float = 600.0
    jitter: float = 0.25  # the delay varies by up to this fraction either way

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_seconds <= 0 or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("RetryPolicy needs max_attempts >= 1, base_seconds > 0, factor >= 1, 0 <= jitter < 1")

    def delay(self, attempts: int, rand: Callable[[], float] = random.random) -> float:
        """Backoff before attempt ``attempts + 1``: base * factor^(attempts-1), capped, with jitter."""
        raw = min(self.max_delay_seconds, self.base_seconds * self.factor ** max(0, attempts - 1))
        return raw * (1 + self.jitter * (2 * rand() - 1))

    def decide(self, attempts: int, error: BaseException, rand: Callable[[], float] = random.random) -> RetryDecision:
        """What to do after attempt number ``attempts`` (1-based) failed with ``error``."""
        message = str(error) or type(error).__name__
        if not is_transient(error):
            return RetryDecision(False, 0.0, f"permanent failure: {message}")
        if attempts >= self.max_attempts:
            return RetryDecision(False, 0.0, f"gave up after {attempts} attempts: {message}")
        delay = self.delay(attempts, rand)
        return RetryDecision(True, delay, f"attempt {attempts} failed, retry in {delay:.1f} s: {message}")
