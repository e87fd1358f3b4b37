"""Retries resume at delivery, recorded deliveries are never repeated, and the heartbeat keeps the lease.

The PACS here is DCMTK's storescp writing every receipt to its own file (``-uf``): duplicates show as
extra files, where a PACS that overwrites by SOP Instance UID would hide them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.db import session_scope
from dicomnode.inference.registry import Registry
from dicomnode.jobs.models import Delivery, Job
from dicomnode.jobs.repository import claim, requeue_expired
from dicomnode.jobs.status import JobStatus
from dicomnode.pipeline import PipelineContext, run_job
from dicomnode.settings import Peer, Settings
from dicomnode.worker import Worker
from tests.conftest import make_settings
from tests.support.models import write_threshold_model
from tests.support.net import free_port, wait_for
from tests.support.peers import storescp
from tests.support.spooled import queue_job, spool
from tests.support.synthetic import make_series


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return write_threshold_model(tmp_path / "models", 40.0).parent


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    folder = tmp_path / "pacs"
    with storescp(folder, extra_args=("-uf",)) as port:  # a new file for every receipt
        yield port, folder


def worker_for(settings: Settings, sessions: sessionmaker[Session], models: Path, pacs_port: int,
               **overrides: object) -> Worker:
    node = make_settings(settings.data_dir, models_dir=models, device="cpu", retry_base_seconds=0.05,
                         pacs=Peer(ae_title="STORESCP", host="127.0.0.1", port=pacs_port), **overrides)
    return Worker(PipelineContext(settings=node, sessions=sessions, registry=Registry(models, "cpu")))


def a_job(settings: Settings, sessions: sessionmaker[Session]) -> int:
    series = make_series(n_slices=6, rows=16, columns=16, series_description="CRASHTEST T1")
    spool(settings, sessions, series)
    return queue_job(sessions, series[0].SeriesInstanceUID)


def job_state(sessions: sessionmaker[Session], job_id: int) -> tuple[JobStatus, str]:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status, job.reason


def audit_count(sessions: sessionmaker[Session], event: str) -> int:
    with sessions() as session:
        return len(session.scalars(select(AuditRecord).where(AuditRecord.event == event)).all())


def receipts(folder: Path) -> list[str]:
    return sorted(str(dcmread(p, stop_before_pixels=True).Modality) for p in folder.iterdir() if p.is_file())


def test_a_retry_after_a_failed_send_resumes_at_delivery(settings: Settings, sessions: sessionmaker[Session],
                                                          models: Path, pacs: tuple[int, Path]) -> None:
    job_id = a_job(settings, sessions)
    down = worker_for(settings, sessions, models, free_port())  # nothing listens there
    assert down.run_once()
    status, reason = job_state(sessions, job_id)
    assert status is JobStatus.QUEUED and "retry" in reason
    written = sorted((settings.results_dir / f"job-{job_id}").glob("*.dcm"))
    assert len(written) == 2
    stamps = [p.stat().st_mtime_ns for p in written]

    up = worker_for(settings, sessions, models, pacs[0])
    wait_for(lambda: up.run_once() and job_state(sessions, job_id)[0] is JobStatus.SUCCEEDED, timeout=30,
             msg="the retry delivered", interval=0.05)
    assert audit_count(sessions, "instances_accessed") == 1  # the model read the series once: no re-inference
    assert [p.stat().st_mtime_ns for p in written] == stamps  # the results were not rebuilt
    assert receipts(pacs[1]) == ["SEG", "SR"]


def test_recorded_deliveries_are_not_repeated_after_a_crash(settings: Settings, sessions: sessionmaker[Session],
                                                           models: Path, pacs: tuple[int, Path]) -> None:
    job_id = a_job(settings, sessions)
    worker = worker_for(settings, sessions, models, pacs[0], job_lease_seconds=0.3)
    job = claim(sessions, "crashed-worker", 0.3)
    assert job is not None and job.id == job_id
    run_job(worker.ctx, job)  # delivered and recorded; then the worker "dies" before recording the outcome
    assert receipts(pacs[1]) == ["SEG", "SR"]
    wait_for(lambda: requeue_expired(sessions) == 1, timeout=10, msg="the dead worker's job requeued")

    assert worker.run_once()
    assert job_state(sessions, job_id)[0] is JobStatus.SUCCEEDED
    assert receipts(pacs[1]) == ["SEG", "SR"]  # nothing sent twice
    assert audit_count(sessions, "result_sent") == 2


def test_the_heartbeat_keeps_a_long_job_leased(settings: Settings, sessions: sessionmaker[Session],
                                               models: Path) -> None:
    job_id = a_job(settings, sessions)
    worker = worker_for(settings, sessions, models, free_port(), job_lease_seconds=0.6)
    job = claim(sessions, worker.worker_id, 0.6)
    assert job is not None

    def lease() -> float:
        with sessions() as session:
            until = session.scalar(select(Job.lease_until).where(Job.id == job_id))
            assert until is not None
            return until.timestamp()

    first = lease()
    stop = threading.Event()
    beat = threading.Thread(target=worker._heartbeat, args=(job, stop))
    beat.start()
    try:
        wait_for(lambda: lease() > first + 1.0, timeout=10, msg="lease extended by the heartbeat")
        assert requeue_expired(sessions) == 0  # well past the first lease, still held
    finally:
        stop.set()
        beat.join()
    with session_scope(sessions) as session:
        held = session.get(Job, job_id)
        assert held is not None and held.status is JobStatus.RUNNING and held.worker_id == worker.worker_id


def test_each_delivery_records_what_was_sent_where(settings: Settings, sessions: sessionmaker[Session],
                                                   models: Path, pacs: tuple[int, Path]) -> None:
    """A delivery row per result sent by C-STORE: its file, SOP Class and Instance UID, destination and outcome,
    as the file holds them (what the retry skips, and what IT staff read)."""
    job_id = a_job(settings, sessions)
    assert worker_for(settings, sessions, models, pacs[0]).run_once()
    assert job_state(sessions, job_id)[0] is JobStatus.SUCCEEDED
    written = {}
    for path in sorted((settings.results_dir / f"job-{job_id}").glob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True)
        written[str(ds.SOPInstanceUID)] = (str(path), str(ds.SOPClassUID), "stored")
    with sessions() as session:
        rows = session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
        recorded = {row.sop_instance_uid: (row.path, row.sop_class_uid, row.outcome) for row in rows}
        destinations = {row.destination for row in rows}
    assert len(written) == 2 and recorded == written
    assert destinations == {f"STORESCP@127.0.0.1:{pacs[0]}"}
    with sessions() as session:
        audit = session.scalars(select(AuditRecord).where(AuditRecord.event.in_(
            ["begin_transfer_out", "result_sent"])).order_by(AuditRecord.id)).all()
    assert [r.event for r in audit] == ["begin_transfer_out", "result_sent", "result_sent"]
    assert {r.study_uid for r in audit} == {job_study(sessions, job_id)} and None not in {r.patient_id for r in audit}
    assert {json.loads(r.detail)["address"] for r in audit[1:]} == {"127.0.0.1"}  # the PACS's host
    begin = json.loads(audit[0].detail)  # what is about to leave, and to where
    assert (audit[0].actor, begin["instances"], begin["destination"], begin["job_id"]) == (
        settings.ae_title, 2, f"STORESCP@127.0.0.1:{pacs[0]}", job_id)


def job_study(sessions: sessionmaker[Session], job_id: int) -> str:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return str(job.series.study.study_uid)
