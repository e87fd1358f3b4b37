from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from dicomnode.errors import BuildError, ModelError, SendError, StoreError
from dicomnode.jobs.retry import RetryPolicy, is_transient
from dicomnode.send.deliver import _classify
from dicomnode.send.scu import StoreOutcome

POLICY = RetryPolicy(max_attempts=5, base_seconds=2, factor=2, max_delay_seconds=10, jitter=0.25)


@pytest.mark.parametrize("error", [
    SendError("association not established", retryable=True), StoreError(), TimeoutError(),
    ConnectionRefusedError(), OperationalError("select", {}, Exception("database is locked")),
])
def test_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    SendError("association rejected", retryable=False), BuildError(), ModelError(), ValueError(), KeyError(),
])
def test_permanent(error: BaseException) -> None:
    assert not is_transient(error)


def test_backoff_is_exponential_and_capped() -> None:
    middle = lambda: 0.5  # noqa: E731 (no jitter at the midpoint)
    assert [POLICY.delay(n, middle) for n in range(1, 6)] == [2, 4, 8, 10, 10]


def test_jitter_stays_within_bounds() -> None:
    assert POLICY.delay(1, lambda: 0.0) == pytest.approx(1.5)
    assert POLICY.delay(1, lambda: 1.0) == pytest.approx(2.5)


def test_transient_failure_is_retried_until_attempts_run_out() -> None:
    error = SendError("association not established", retryable=True)
    decisions = [POLICY.decide(n, error, lambda: 0.5) for n in range(1, 6)]
    assert [d.retry for d in decisions] == [True, True, True, True, False]
    assert decisions[0].delay_seconds == 2
    assert decisions[-1].reason.startswith("gave up after 5 attempts")


def test_permanent_failure_is_never_retried() -> None:
    decision = POLICY.decide(1, SendError("association with PACS rejected", retryable=False))
    assert not decision.retry
    assert decision.reason == "permanent failure: association with PACS rejected"


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts >= 1"):
        RetryPolicy(max_attempts=0)


@pytest.mark.parametrize(("statuses", "retryable"), [
    ([0xA700], True), ([None], True), ([0xA700, None], True),
    ([0xA900], False), ([0xC000], False), ([0xA700, 0xA900], False), ([0x0122], False),
])
def test_store_statuses_classify(statuses: list[int | None], retryable: bool) -> None:
    from pathlib import Path

    failed = [StoreOutcome(Path("x"), "1.2", "1.2.3", s) for s in statuses]
    assert _classify(failed) is retryable


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"base_seconds": 0}, {"base_seconds": -1.0}, {"factor": 0.99},
                                 {"jitter": -0.01}, {"jitter": 1.0}])
def test_policy_refuses_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"^RetryPolicy needs max_attempts >= 1, base_seconds > 0"):
        RetryPolicy(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [{"max_attempts": 1}, {"factor": 1.0}, {"jitter": 0.0}, {"jitter": 0.99}])
def test_policy_accepts_the_edges(good: dict[str, float]) -> None:
    RetryPolicy(**good)  # type: ignore[arg-type]


def test_giving_up_is_exactly_no_retry_and_no_delay() -> None:
    permanent = POLICY.decide(1, BuildError("no segment"))
    exhausted = POLICY.decide(5, StoreError("disk"), lambda: 0.5)
    for decision in (permanent, exhausted):
        assert decision.retry is False and decision.delay_seconds == 0.0


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    assert POLICY.decide(1, TimeoutError(), lambda: 0.5).reason.endswith(": TimeoutError")
