"""Crash safety: SIGKILL the node at random points during ingest and during inference, then restart it.

Each iteration checks two things: every instance that DCMTK storescu saw acknowledged with 0x0000 is in
the spool (same bytes) and in the database; and the study still gets its results on the PACS exactly
once. CI runs a bounded sample (DICOMNODE_CRASH_ITERATIONS, default 3 of each); the closing-note
figures come from a run with 20.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.jobs.models import Instance, Job
from dicomnode.jobs.status import JobStatus
from tests.e2e.test_reliability import results_in, start_node
from tests.support.net import wait_for
from tests.support.peers import DCMTK_ENV, NodeProcess, Orthanc, require, storescu
from tests.support.synthetic import make_series, write_series

pytestmark = pytest.mark.e2e

ITERATIONS = int(os.environ.get("DICOMNODE_CRASH_ITERATIONS", "3"))


def acknowledged(storescu_output: str) -> set[Path]:
    """Files storescu -v saw answered with Success."""
    acked, current = set(), None
    for line in storescu_output.splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.add(current)
    return acked


def db_instances(node: NodeProcess) -> dict[str, Instance]:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        return {i.sop_instance_uid: i for i in session.scalars(select(Instance))}


def job_statuses(node: NodeProcess) -> list[JobStatus]:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        return list(session.scalars(select(Job.status).order_by(Job.id)))


def check_acknowledged_are_kept(node: NodeProcess, acked: set[Path]) -> int:
    stored = db_instances(node)
    for path in acked:
        ds = dcmread(path, stop_before_pixels=True)
        row = stored.get(ds.SOPInstanceUID)
        assert row is not None, f"acknowledged instance {path.name} missing from the database"
        spool = Path(row.path)
        assert spool.is_file(), f"acknowledged instance {path.name} missing from the spool"
        assert hashlib.sha256(spool.read_bytes()).hexdigest() == row.sha256
    return len(acked)


def new_series(folder: Path, size: int = 32) -> str:
    series = make_series(n_slices=40, rows=size, columns=size, series_description="CRASHTEST T1")
    write_series(series, folder)
    return str(series[0].StudyInstanceUID)


def test_sigkill_during_ingest_loses_nothing(orthanc: Orthanc, tmp_path: Path) -> None:
    rng = random.Random(1234)
    # the study must not be judged complete between the crash and the PACS' re-send: a generous idle time
    node = start_node(tmp_path / "node", orthanc, DICOMNODE_JOB_LEASE_SECONDS="2", DICOMNODE_STUDY_IDLE_SECONDS="8")
    kept = 0
    try:
        for i in range(ITERATIONS):
            folder = tmp_path / f"in{i}"
            study_uid = new_series(folder)
            sender = subprocess.Popen(
                [require("storescu"), "-v", "-aet", "STORESCU", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                 *sorted(str(p) for p in folder.iterdir())],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
            killed_after = rng.uniform(0.0, 0.5)
            time.sleep(killed_after)  # a random crash point, not a wait for a condition
            node.stop(signal.SIGKILL)
            output, _ = sender.communicate(timeout=60)
            acked = acknowledged(output)
            node.start()
            kept += check_acknowledged_are_kept(node, acked)
            # the PACS sends the study again, whole; the node must finish it and deliver exactly once
            result = storescu(node.port, folder, called=node.ae_title)
            assert result.returncode == 0, result.stderr
            wait_for(lambda uid=study_uid: results_in(orthanc, uid) == {"SEG": 1, "SR": 1}, timeout=90,
                     msg=f"iteration {i}: results exactly once")
            print(f"\ningest iteration {i}: killed after ~{killed_after:.2f} s, {len(acked)}/40 acknowledged, "
                  f"all kept")
    finally:
        node.stop()
    print(f"ingest: {ITERATIONS} SIGKILL iterations, {kept} acknowledged instances checked, 0 lost")


def test_sigkill_during_inference_still_delivers_exactly_once(orthanc: Orthanc, tmp_path: Path) -> None:
    rng = random.Random(4321)
    node = start_node(tmp_path / "node", orthanc, DICOMNODE_JOB_LEASE_SECONDS="2")
    try:
        for i in range(ITERATIONS):
            folder = tmp_path / f"in{i}"
            study_uid = new_series(folder, size=256)  # big enough that building and sending take a while
            assert storescu(node.port, folder, called=node.ae_title).returncode == 0
            wait_for(lambda n=i + 1: len(job_statuses(node)) == n and job_statuses(node)[-1] is not JobStatus.QUEUED,
                     timeout=30, msg="job claimed", interval=0.02)
            delay = rng.uniform(0.0, 0.12)  # claim -> delivered takes about 0.15 s here
            time.sleep(delay)  # a random crash point after the claim
            state = job_statuses(node)[-1].value
            node.stop(signal.SIGKILL)
            node.start()
            wait_for(lambda uid=study_uid: results_in(orthanc, uid) == {"SEG": 1, "SR": 1}, timeout=90,
                     msg=f"iteration {i}: results exactly once after the crash")
            assert all(s in (JobStatus.SUCCEEDED, JobStatus.RUNNING, JobStatus.QUEUED) for s in job_statuses(node))
            print(f"\ninference iteration {i}: killed ~{delay:.2f} s after the claim (job {state}); delivered once")
    finally:
        node.stop()
