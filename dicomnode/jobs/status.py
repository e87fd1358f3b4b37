"""The job states and the transitions between them: the only place they are defined.

The database stores :class:`JobStatus` in a column with a CHECK constraint, and
:func:`dicomnode.jobs.repository.transition` applies a transition only with a conditional UPDATE
(``WHERE status = <from>``), so two workers can never both move the same job.
"""

from __future__ import annotations

import enum

from dicomnode.errors import IllegalTransition


class JobStatus(enum.StrEnum):
    QUEUED = "queued"            # waiting for a worker (not before run_after, when a retry is scheduled)
    RUNNING = "running"          # claimed by a worker holding a lease
    SUCCEEDED = "succeeded"      # every result instance stored on the destination (0x0000 or warning)
    SKIPPED = "skipped"          # the model cannot take this series; the reason is recorded
    DEAD_LETTER = "dead_letter"  # failed permanently, or out of retries; the reason is recorded


class StudyState(enum.StrEnum):
    RECEIVING = "receiving"  # instances still arriving: waits for study_idle_seconds of quiet
    ROUTED = "routed"        # complete; routing created one job per (series, model)
    NO_MATCH = "no_match"    # complete; no rule matched any usable series, so nothing to do
    PURGED = "purged"        # its instances and results were deleted by the retention policy


ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.DEAD_LETTER}),  # DEAD_LETTER: an operator's cancel
    # back to QUEUED: a transient failure (retry scheduled), the lease expired (dead worker), or the
    # worker was stopped mid-job
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.SKIPPED, JobStatus.DEAD_LETTER, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.SKIPPED: frozenset(),
    JobStatus.DEAD_LETTER: frozenset({JobStatus.QUEUED}),  # an operator's retry
}

FINAL_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.SKIPPED, JobStatus.DEAD_LETTER})


def check_transition(current: JobStatus, new: JobStatus) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> new`` is allowed."""
    if new not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(f"job cannot go from {current.value} to {new.value}")
