"""Kill the whole node with SIGKILL at chosen points, restart it, and check that nothing was lost.

Phases: ``receiving`` (the PACS is sending the study), ``running`` (a job claimed, the model not done),
``building`` (the results are written, nothing delivered) and ``sending`` (the PACS is receiving a
result). Each kill waits for its phase's condition and then checks, from the database of the dead node,
that it landed there (the job still RUNNING, or the study still arriving). After each restart:
every instance storescu saw acknowledged is in the spool and the database, the study's job reaches
SUCCEEDED (QUEUED or RUNNING are not final), and the PACS received exactly one result set, counted as
deliveries: each result instance once, plus once more only where a kill cut its C-STORE short before
the node recorded the answer (at-least-once across a crash mid-send; the UIDs are deterministic).
Used by tests/e2e/test_crash.py (CI: 3 kills) and bench/soak.py (20).
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.jobs.models import Delivery, Instance, Job, Series, Study
from dicomnode.jobs.status import JobStatus
from tests.support.children import dies_with_us
from tests.support.models import write_threshold_model
from tests.support.net import holds_for, wait_for
from tests.support.peers import DCMTK_ENV, NodeProcess, Orthanc, require, storescu
from tests.support.synthetic import make_series, write_series

PHASES = ("receiving", "running", "building", "sending")
SLICES = 40


@dataclass
class SoakFigures:
    seed: int
    kills: int = 0
    by_phase: Counter[str] = field(default_factory=Counter)
    acknowledged: int = 0
    lost: int = 0
    result_sets: int = 0
    resent_after_kill: int = 0

    def line(self) -> str:
        return (f"soak seed {self.seed}: {self.kills} SIGKILLs ({dict(self.by_phase)}), {self.acknowledged} "
                f"acknowledged instances, {self.lost} lost, {self.result_sets} result sets delivered once each "
                f"({self.resent_after_kill} C-STOREs repeated after a kill cut them short)")


def _session(node: NodeProcess) -> Session:
    return Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}"))


def _study_jobs(node: NodeProcess, study_uid: str) -> list[Job]:
    with _session(node) as session:
        return list(session.scalars(select(Job).join(Job.series).join(Series.study)
                                    .where(Study.study_uid == study_uid).order_by(Job.id)))


def _recorded(node: NodeProcess, job_ids: list[int]) -> set[str]:
    with _session(node) as session:
        return set(session.scalars(select(Delivery.sop_instance_uid).where(
            Delivery.job_id.in_(job_ids), Delivery.outcome == "stored")))


def acknowledged(storescu_output: str) -> set[Path]:
    """Files storescu -v saw answered with Success."""
    acked, current = set(), None
    for line in storescu_output.splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.add(current)
    return acked


def lost_instances(node: NodeProcess, acked: set[Path]) -> list[str]:
    """Acknowledged files not in the database, or whose spool copy is missing or differs."""
    with _session(node) as session:
        stored = {i.sop_instance_uid: (i.path, i.sha256) for i in session.scalars(select(Instance))}
    lost = []
    for path in acked:
        row = stored.get(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        spool = Path(row[0]) if row else None
        if row is None or spool is None or not spool.is_file() or \
                hashlib.sha256(spool.read_bytes()).hexdigest() != row[1]:
            lost.append(path.name)
    return lost


def start_soak_node(folder: Path, pacs: Orthanc) -> NodeProcess:
    models = write_threshold_model(folder / "models", 40.0).parent
    return NodeProcess(folder, env={
        "DICOMNODE_PACS": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
        "DICOMNODE_PEERS": "STORESCU@127.0.0.1:104",
        "DICOMNODE_MODELS_DIR": str(models),
        # a study must not be judged complete between a kill while receiving and the PACS' re-send
        "DICOMNODE_STUDY_IDLE_SECONDS": "15",
        "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.3",
        "DICOMNODE_WORKER_POLL_SECONDS": "0.2",
        "DICOMNODE_MIN_FREE_DISK_MB": "1",
        "DICOMNODE_RETRY_BASE_SECONDS": "0.5",
        "DICOMNODE_RETRY_MAX_ATTEMPTS": "30",
        "DICOMNODE_JOB_LEASE_SECONDS": "1.5",
    }).start()


class Soak:
    """One node, one slow Orthanc (``receive_delay``: long send phases), one study per kill."""

    def __init__(self, folder: Path, pacs: Orthanc, seed: int) -> None:
        self.folder, self.pacs = folder, pacs
        self.rng = random.Random(seed)
        self.figures = SoakFigures(seed=seed)
        self.node = start_soak_node(folder / "node", pacs)

    def run(self, kills: int, log: Callable[[str], None] = print) -> SoakFigures:
        order = list(PHASES)
        self.rng.shuffle(order)
        try:
            for i in range(kills):
                phase = order[i % len(order)]
                self.one(i, phase)
                log(f"kill {i + 1}/{kills} ({phase}): ok")
        finally:
            self.node.stop()
        return self.figures

    def one(self, i: int, phase: str) -> None:
        folder = self.folder / f"study{i}"
        series = make_series(n_slices=SLICES, rows=48, columns=48, series_description="CRASHTEST T1")
        files = write_series(series, folder)
        study_uid = str(series[0].StudyInstanceUID)
        acked: set[Path] = set()
        if phase == "receiving":
            acked = self._kill_while_receiving(files, study_uid)
        else:
            assert storescu(self.node.port, folder, called=self.node.ae_title).returncode == 0
            acked = set(files)
            self._kill_in_job(study_uid, phase)
        before = self.pacs.receipts(study_uid)
        recorded = _recorded(self.node, [j.id for j in _study_jobs(self.node, study_uid)])
        self.figures.kills += 1
        self.figures.by_phase[phase] += 1
        self.node.start()
        lost = lost_instances(self.node, acked)
        self.figures.acknowledged += len(acked)
        self.figures.lost += len(lost)
        assert not lost, f"kill {i} ({phase}): acknowledged instances lost: {lost}"
        if phase == "receiving":  # the PACS sends the study again, whole
            assert storescu(self.node.port, folder, called=self.node.ae_title).returncode == 0
        self._check_delivered_once(i, phase, study_uid, before, recorded)

    def _kill_while_receiving(self, files: list[Path], study_uid: str) -> set[Path]:
        target = self.rng.randint(1, SLICES // 2)
        sender = subprocess.Popen(
            [require("storescu"), "-v", "-aet", "STORESCU", "-aec", self.node.ae_title, "127.0.0.1",
             str(self.node.port), *map(str, files)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV, **dies_with_us())
        spool = self.node.data_dir / "spool" / study_uid  # this study's instances only
        wait_for(lambda: sum(1 for _ in spool.rglob("*.dcm")) >= target, timeout=60, interval=0.005,
                 msg=f"{target} instances spooled")
        self.node.stop(signal.SIGKILL)
        output, _ = sender.communicate(timeout=60)
        acked = acknowledged(output)
        assert len(acked) < len(files), "the kill landed after the whole study was received, not mid-phase"
        assert len(acked) >= target - 1, f"{len(acked)} acknowledged, but {target} were spooled before the kill"
        return acked

    def _kill_in_job(self, study_uid: str, phase: str) -> None:
        def job() -> Job | None:
            jobs = _study_jobs(self.node, study_uid)
            return jobs[-1] if jobs else None

        def reached() -> bool:
            current = job()
            if current is None or current.status is not JobStatus.RUNNING:
                return False
            if phase == "running":
                return True
            built = (self.node.data_dir / "results" / f"job-{current.id}" / "results.json").is_file()
            if phase == "building":
                return built
            return bool(self.pacs.receipts(study_uid))  # sending: the PACS is taking a result

        wait_for(reached, timeout=120, interval=0.01, msg=f"job reached phase {phase}")
        self.node.stop(signal.SIGKILL)
        dead = job()
        assert dead is not None and dead.status is JobStatus.RUNNING, \
            f"the kill landed after the job finished ({dead.status if dead else None}), not mid-{phase}"

    def _check_delivered_once(self, i: int, phase: str, study_uid: str, before: Counter[tuple[str, str]],
                              recorded: set[str]) -> None:
        def settled() -> bool:
            """The newest job SUCCEEDED and every earlier one was SKIPPED (a partial study judged complete
            before the re-send: never delivered); nothing is QUEUED or RUNNING."""
            statuses = [j.status for j in _study_jobs(self.node, study_uid)]
            return bool(statuses) and statuses[-1] is JobStatus.SUCCEEDED and \
                all(s is JobStatus.SKIPPED for s in statuses[:-1])

        wait_for(settled, timeout=180, msg=f"kill {i} ({phase}): the study's job SUCCEEDED")
        assert holds_for(settled, seconds=2)  # and nothing else was queued meanwhile
        after = self.pacs.receipts(study_uid)
        assert sorted(m for m, _ in after) == ["SEG", "SR"], f"kill {i} ({phase}): result sets {dict(after)}"
        expected = {key: before[key] + (0 if key[1] in recorded else 1) for key in after}
        assert dict(after) == expected, f"kill {i} ({phase}): deliveries {dict(after)}, expected {expected}"
        self.figures.result_sets += 1
        self.figures.resent_after_kill += sum(after.values()) - len(after)
