"""The worker loop: claim -> pipeline.run_job -> record the outcome; heartbeat while running.

The worker never dies of a job: every exception becomes a recorded outcome. Transient failures are
retried under :class:`~dicomnode.jobs.retry.RetryPolicy`; permanent ones go to the dead letter, and a
failure notice SR goes into the study. On a clean stop the job in hand finishes first; after a crash its
lease runs out and the job is requeued.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass

from dicomnode.db import session_scope, utcnow
from dicomnode.errors import DicomNodeError, IllegalTransition, SeriesNotUsable
from dicomnode.jobs.repository import ClaimedJob, claim, heartbeat, transition
from dicomnode.jobs.retry import RetryPolicy
from dicomnode.jobs.status import JobStatus
from dicomnode.log import extra
from dicomnode.pipeline import PipelineContext, run_job, send_failure_notice

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class JobOutcome:
    status: JobStatus
    reason: str
    run_after: dt.datetime | None = None


def settle_heap() -> None:
    """Collect once, then put every object alive now (modules, settings, loaded models: what the process
    keeps until it stops) out of the cyclic collector's reach (:func:`gc.freeze`), so that a full
    collection walks only what the node allocates while it serves. A full collection holds the GIL, so it
    stalls every association: 0.18 s over the 441,000 objects of the node's imports, more than a second
    when the machine is busy, against nothing once they are frozen."""
    gc.collect()
    gc.freeze()


class Worker:
    """One job at a time; woken by ``wake`` when jobs are queued, else polling every ``worker_poll_seconds``."""

    def __init__(self, ctx: PipelineContext, worker_id: str | None = None,
                 wake: threading.Event | None = None) -> None:
        self.ctx = ctx
        self.wake = wake or threading.Event()
        self.worker_id = worker_id or new_worker_id()
        settings = ctx.settings
        self.policy = RetryPolicy(max_attempts=settings.retry_max_attempts, base_seconds=settings.retry_base_seconds,
                                  max_delay_seconds=settings.retry_max_delay_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="dicomnode-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to stop after the job in hand, and wait for it."""
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        self._warm_up()
        while not self._stop.is_set():
            self.wake.clear()  # before the claim: a job queued after it wakes the wait below
            try:
                ran = self.run_once()
            except Exception:
                log.exception("worker loop error", extra=extra(stage="worker"))
                ran = False
            if not ran:
                self.wake.wait(self.ctx.settings.worker_poll_seconds)

    def _warm_up(self) -> None:
        """Load every installed model before the first job, so that no study waits for a model load.

        highdicom's tables of the standard (read once per process, about 0.7 s) are loaded here too.
        """
        with contextlib.suppress(Exception):  # a private helper: a later highdicom may lack it
            from highdicom import _standard_utils

            _standard_utils.get_iod_module_map()
            _standard_utils.get_module_attribute_map()
        for model_id in self.ctx.registry.manifests:
            try:
                self.ctx.registry.get(model_id)
            except DicomNodeError as exc:
                log.error("model not loaded: %s", exc, extra=extra(stage="worker", model=model_id))
        settle_heap()  # the models' objects too
        log.info("worker warm", extra=extra(stage="worker"))

    def run_once(self) -> bool:
        """Claim and run one job; False when the queue was empty."""
        settings = self.ctx.settings
        job = claim(self.ctx.sessions, self.worker_id, settings.job_lease_seconds)
        if job is None:
            return False
        log.info("job started", extra=extra(stage="worker", job_id=job.id, model=job.model_id, attempt=job.attempts))
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, beat_stop), daemon=True)
        beat.start()
        try:
            outcome = self._execute(job)
        finally:
            beat_stop.set()
            beat.join()
        try:
            with session_scope(self.ctx.sessions) as session:
                transition(session, job.id, JobStatus.RUNNING, outcome.status, outcome.reason,
                           worker_id=self.worker_id, run_after=outcome.run_after)
        except IllegalTransition:
            log.warning("job lease lost before the outcome was recorded", extra=extra(stage="worker", job_id=job.id))
            return True
        log.info("job finished", extra=extra(stage="worker", job_id=job.id, status=outcome.status.value))
        if self.ctx.metrics is not None:
            self.ctx.metrics.outcome(job.model_id, outcome.status.value)
        if outcome.status is JobStatus.DEAD_LETTER and settings.failure_notice:
            send_failure_notice(self.ctx, job, outcome.reason)
        return True

    def _execute(self, job: ClaimedJob) -> JobOutcome:
        try:
            result = run_job(self.ctx, job)
        except SeriesNotUsable as exc:
            return JobOutcome(JobStatus.SKIPPED, str(exc))
        except Exception as exc:
            if not isinstance(exc, DicomNodeError):
                log.exception("job crashed", extra=extra(stage="worker", job_id=job.id))
            decision = self.policy.decide(job.attempts, exc)
            log.warning("job attempt failed (%s)", type(exc).__name__,
                        extra=extra(stage="worker", job_id=job.id, retry=decision.retry,
                                    delay=round(decision.delay_seconds, 1)))
            if decision.retry:
                return JobOutcome(JobStatus.QUEUED, decision.reason,
                                  utcnow() + dt.timedelta(seconds=decision.delay_seconds))
            return JobOutcome(JobStatus.DEAD_LETTER, decision.reason)
        return JobOutcome(JobStatus.SUCCEEDED, f"{len(result.paths)} result(s) stored; {result.summary}")

    def _heartbeat(self, job: ClaimedJob, stop: threading.Event) -> None:
        interval = self.ctx.settings.job_lease_seconds / 3
        while not stop.wait(interval):
            try:
                heartbeat(self.ctx.sessions, job.id, self.worker_id, self.ctx.settings.job_lease_seconds)
            except Exception:
                log.exception("heartbeat failed", extra=extra(stage="worker", job_id=job.id))
