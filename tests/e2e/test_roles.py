"""Separate roles on one real PostgreSQL: two ``dicomnode receive`` and three ``dicomnode work`` processes.

Studies go to both receivers at once; one worker is SIGKILLed while it holds a job. Every study must get
exactly one result set (one SEG and one SR, counted as C-STOREs received by the PACS), no job may be
held by two workers at once, and the killed worker's job must be finished by another. CI runs
DICOMNODE_ROLES_STUDIES studies (default 12); ``pytest -m slow`` runs the 50 of the issue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.jobs.models import Job, JobEvent
from dicomnode.jobs.status import JobStatus
from tests.support.models import write_threshold_model
from tests.support.net import wait_for
from tests.support.peers import REPO, NodeProcess, Orthanc, storescu
from tests.support.postgres import Postgres
from tests.support.synthetic import make_series, write_series

pytestmark = pytest.mark.e2e

SAMPLE = int(os.environ.get("DICOMNODE_ROLES_STUDIES", "12"))


@pytest.fixture
def slow_pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """A PACS taking 0.4 s over each C-STORE, so that a job is held long enough to kill its worker."""
    pacs = Orthanc(tmp_path / "orthanc", receive_delay=0.4).start()
    yield pacs
    pacs.stop()


def _env(tmp_path: Path, pacs: Orthanc, url: str) -> dict[str, str]:
    models = write_threshold_model(tmp_path / "models", 40.0).parent
    return {
        "DICOMNODE_DATABASE_URL": url,
        "DICOMNODE_DATA_DIR": str(tmp_path / "shared"),  # one spool path for every role
        "DICOMNODE_PACS": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
        "DICOMNODE_PEERS": "STORESCU@127.0.0.1:104",
        "DICOMNODE_MODELS_DIR": str(models),
        "DICOMNODE_STUDY_IDLE_SECONDS": "1",
        "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.3",
        "DICOMNODE_WORKER_POLL_SECONDS": "5",  # pick-up must come from LISTEN/NOTIFY, not from polling
        "DICOMNODE_JOB_LEASE_SECONDS": "4",
        "DICOMNODE_MIN_FREE_DISK_MB": "1",
        "DICOMNODE_RETRY_BASE_SECONDS": "1",
    }


def _deliveries(pacs: Orthanc, study_uid: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (modality, _), received in pacs.receipts(study_uid).items():
        counts[modality] = counts.get(modality, 0) + received
    return counts


def _send(port: int, folder: Path, index: int) -> str:
    series = make_series(n_slices=6, rows=16, columns=16, series_description="CRASHTEST T1",
                         patient_id=f"SYN-{index:04d}")
    write_series(series, folder)
    result = storescu(port, folder, called="DICOMNODE")
    assert result.returncode == 0, result.stderr
    return str(series[0].StudyInstanceUID)


def _overlaps(events: list[JobEvent]) -> list[int]:
    """Jobs that went to RUNNING again before leaving RUNNING: held twice at once."""
    running: set[int] = set()
    twice = []
    for event in events:
        if event.to_status == JobStatus.RUNNING:
            if event.job_id in running:
                twice.append(event.job_id)
            running.add(event.job_id)
        elif event.from_status == JobStatus.RUNNING:
            running.discard(event.job_id)
    return twice


def run_roles(tmp_path: Path, pacs: Orthanc, postgres: Postgres, n_studies: int) -> None:
    url = postgres.create_database(f"roles{os.getpid()}_{n_studies}")
    env = _env(tmp_path, pacs, url)
    upgrade = subprocess.run([sys.executable, "-m", "dicomnode", "db", "upgrade"], cwd=REPO, capture_output=True,
                             text=True, env={**os.environ, **env}, timeout=120, check=False)
    assert upgrade.returncode == 0, upgrade.stderr
    receivers = [NodeProcess(tmp_path / f"receive{i}", env, command="receive") for i in range(2)]
    workers = [NodeProcess(tmp_path / f"work{i}", env, command="work") for i in range(3)]
    engine = create_engine(url)
    try:
        for process in receivers + workers:
            process.start()
        victim = workers[0]
        assert victim.process is not None
        holder = f":{victim.process.pid}:"

        def victim_holds_a_job() -> bool:
            with Session(engine) as session:
                return session.scalar(select(Job.id).where(Job.status == JobStatus.RUNNING,
                                                           Job.worker_id.contains(holder))) is not None

        with ThreadPoolExecutor(4) as pool:  # both receivers at once, while the workers already run jobs
            sent = [pool.submit(_send, receivers[i % 2].port, tmp_path / f"in{i}", i) for i in range(n_studies)]
            wait_for(victim_holds_a_job, timeout=120, msg="the victim worker holding a job", interval=0.05)
            victim.stop(signal.SIGKILL)
            studies = [future.result() for future in sent]

        for study_uid in studies:
            wait_for(lambda uid=study_uid: set(_deliveries(pacs, uid)) == {"SEG", "SR"}, timeout=300,  # type: ignore[misc]
                     msg="one SEG and one SR for every study")

        def statuses() -> list[JobStatus]:
            with Session(engine) as session:
                return list(session.scalars(select(Job.status)))

        # the PACS logs a receipt before it answers: the job succeeds a moment after its last delivery
        wait_for(lambda: statuses() == [JobStatus.SUCCEEDED] * n_studies, timeout=60, msg="every job succeeded")
        with Session(engine) as session:
            events = list(session.scalars(select(JobEvent).order_by(JobEvent.id)))
        assert _overlaps(events) == []
        repeated = {uid: d for uid in studies if (d := _deliveries(pacs, uid)) != {"SEG": 1, "SR": 1}}
        results = {uid: {m for m, _ in pacs.receipts(uid)} for uid in studies}
        distinct = {uid: len(pacs.receipts(uid)) for uid in studies}
        assert all(r == {"SEG", "SR"} for r in results.values())
        assert set(distinct.values()) == {2}  # one result set: the same two SOP Instance UIDs, however often
        assert len(repeated) <= 1, repeated  # only the killed worker's study may see a C-STORE repeated
        print(f"\n{n_studies} studies through 2 receivers and 3 workers (one SIGKILLed); "
              f"repeated C-STOREs: {sum(sum(d.values()) - 2 for d in repeated.values())}")
    finally:
        for process in receivers + workers:
            process.stop()
        engine.dispose()


def test_two_receivers_three_workers_on_postgresql(slow_pacs: Orthanc, postgres: Postgres, tmp_path: Path) -> None:
    run_roles(tmp_path, slow_pacs, postgres, SAMPLE)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fifty_studies_two_receivers_three_workers(slow_pacs: Orthanc, postgres: Postgres, tmp_path: Path) -> None:
    run_roles(tmp_path, slow_pacs, postgres, 50)
