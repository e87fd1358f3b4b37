"""Latency: from the last instance received to every result acknowledged by the PACS, split by stage.

The all-in-one node runs in this process with a real Orthanc as its PACS; DCMTK storescu sends a
synthetic MR series (189 slices of 256x256 by default, the size of the brain MR of issue 11), the
test-only ONNX threshold model (tests/support/models.py) segments it, and the node's own records give
the split:

- idle timer: ``study_idle_seconds``, the wait that defines "study complete" (not counted below);
- sweep: from the end of the idle timer to the sweep that routed the study (``sweep_interval_seconds``);
- pick-up: from routing to a worker's claim;
- load, model, build, write, send: the pipeline's stages ("job timings" in the node's log);
- rest: the worker's time around the pipeline (claim commit, heartbeat thread, outcome commit);
- total: from the end of the idle timer to the job's success (every result acknowledged).

    PYTHONPATH=. python bench/latency.py [--studies 3] [--slices 189] [--deepbet] [--priors]
    PYTHONPATH=. python bench/latency.py --reference /tmp/ref [--rounds 3]

Then, in the same run, "counts vs idle": Orthanc routes each study to the node (C-STORE from the
PACS), once with Orthanc a query peer (``query = true``: the node asks it for NumberOf*RelatedInstances and
routes a study as soon as its instances match) and once without (the idle timer, ``--idle`` seconds, the
node's default), and the table gives last acknowledged instance -> routed, -> job running, -> every result
acknowledged by the PACS.

``--priors`` also fetches a 189-slice prior for a job (a threshold model that declares ``[input.priors]``) by
C-GET and by C-MOVE and prints its size and the retrieval's time.
``--deepbet`` also runs the bundled deepbet model on the MNI152 template (../shared/data).
``--reference`` runs the threshold case of this bench in another checkout of the node (``git worktree add
/tmp/ref <commit>``) and in this one, alternating, each in its own process, and prints each stage's median
over the rounds and its ratio to the reference's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dicomnode.jobs.models import Job, JobEvent, PriorStudy, Series, Study
from dicomnode.jobs.status import JobStatus
from dicomnode.node import start_node
from dicomnode.settings import Peer, Rule, Settings
from tests.support.models import write_threshold_model
from tests.support.net import free_port, wait_for
from tests.support.peers import REPO, Orthanc, storescu
from tests.support.synthetic import make_series, write_series

MNI = REPO.parent / "shared" / "data" / "mr_t1_brain_mni152"
STAGES = ["sweep", "pick-up", "load", "model", "build", "write", "send", "rest", "total", "total - model"]
PIPELINE = ["load", "model", "build", "write", "send"]


class Timings(logging.Handler):
    """Collects the pipeline's "job timings" records by job id."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.by_job: dict[int, dict[str, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "job timings":
            fields: dict[str, Any] = dict(getattr(record, "ctx", {}))
            self.by_job[int(fields.pop("job_id"))] = {k: float(v) for k, v in fields.items() if k != "stage"}


def _utc(at: dt.datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()


def one_study(node: Any, port: int, folder: Path, timings: Timings, series: list[Any]) -> dict[str, float]:
    write_series(series, folder)
    result = storescu(port, folder, called="DICOMNODE")
    assert result.returncode == 0, result.stderr
    study_uid = str(series[0].StudyInstanceUID)
    sessions, idle = node.ctx.sessions, node.settings.study_idle_seconds

    def finished() -> tuple[Study, Job, list[JobEvent]] | None:
        with sessions() as session:
            study = session.scalar(select(Study).where(Study.study_uid == study_uid))
            job = session.scalar(select(Job).join(Job.series).join(Series.study).where(Study.study_uid == study_uid))
            if study is None or job is None or job.status != JobStatus.SUCCEEDED:
                return None
            events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)))
            return study, job, events

    study, job, events = wait_for(finished, timeout=600, msg="job succeeded", interval=0.05)
    stages = wait_for(lambda: timings.by_job.get(job.id), timeout=30, msg="job timings")
    complete = _utc(study.last_received_at) + idle
    assert study.completed_at is not None
    running = next(e for e in events if e.to_status == JobStatus.RUNNING)
    succeeded = next(e for e in events if e.to_status == JobStatus.SUCCEEDED)
    split = {"sweep": _utc(study.completed_at) - complete, "pick-up": _utc(running.at) - _utc(study.completed_at),
             **stages, "total": _utc(succeeded.at) - complete}
    split["rest"] = _utc(succeeded.at) - _utc(running.at) - sum(split.get(k, 0.0) for k in PIPELINE)
    split["total - model"] = split["total"] - split.get("model", 0.0)
    return split


def run(label: str, settings: Settings, make: Any, studies: int, root: Path) -> None:
    timings = Timings()
    logging.getLogger("dicomnode.pipeline").addHandler(timings)
    logging.getLogger("dicomnode.pipeline").setLevel(logging.INFO)
    node = start_node(settings)
    try:
        for model_id in node.ctx.registry.manifests:  # warm, as the worker is before its first claim
            node.ctx.registry.get(model_id)
        splits = [one_study(node, settings.port, root / f"{label}-in{i}", timings, make(i)) for i in range(studies)]
    finally:
        node.stop()
        logging.getLogger("dicomnode.pipeline").removeHandler(timings)
    print(f"\n{label}: median of {studies} studies (seconds; idle timer {settings.study_idle_seconds:g} s not counted)")
    print("| " + " | ".join(STAGES) + " |\n|" + "---|" * len(STAGES))
    print("| " + " | ".join(f"{statistics.median(s.get(k, 0.0) for s in splits):.3f}" for k in STAGES) + " |")


COUNTS_COLUMNS = ["routed", "job running", "result on the PACS"]


def routed_study(node: Any, pacs: Orthanc, folder: Path, series: list[Any]) -> dict[str, float]:
    """``series`` into Orthanc, then Orthanc sends it to the node; seconds from the node's last
    acknowledged instance to routing, to the job running and to every result acknowledged by the PACS."""
    write_series(series, folder)
    assert storescu(pacs.dicom_port, folder, called=pacs.aet).returncode == 0
    study_uid = str(series[0].StudyInstanceUID)
    answer = pacs.request("POST", "/modalities/NODE/store", {"Resources": [pacs.study_id(study_uid)],
                                                             "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0, answer

    def finished() -> tuple[Study, list[JobEvent]] | None:
        with node.ctx.sessions() as session:
            study = session.scalar(select(Study).where(Study.study_uid == study_uid))
            job = session.scalar(select(Job).join(Job.series).join(Series.study).where(Study.study_uid == study_uid))
            if study is None or job is None or job.status != JobStatus.SUCCEEDED:
                return None
            return study, list(session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)))

    found = wait_for(finished, timeout=600, msg="job succeeded", interval=0.05)
    assert found is not None
    study, events = found
    last = _utc(study.last_received_at)
    assert study.completed_at is not None
    running = next(e for e in events if e.to_status == JobStatus.RUNNING)
    succeeded = next(e for e in events if e.to_status == JobStatus.SUCCEEDED)
    return {"routed": _utc(study.completed_at) - last, "job running": _utc(running.at) - last,
            "result on the PACS": _utc(succeeded.at) - last}


def counts_vs_idle(root: Path, pacs: Orthanc, args: argparse.Namespace) -> None:
    """Last ack -> result on the PACS, routed by Orthanc, with its counts and with the idle timer."""
    rows: dict[str, dict[str, float]] = {}
    models = write_threshold_model(root / "models-counts", 40.0).parent
    for label, query in ((f"idle timer ({args.idle:g} s)", False), ("PACS counts (C-FIND)", True)):
        settings = Settings.load(None, data_dir=root / f"counts-{query}", port=free_port(), host="127.0.0.1",
                                 models_dir=models, min_free_disk_mb=1, study_idle_seconds=args.idle,
                                 pacs=Peer(ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port, query=query))
        pacs.add_modality("NODE", settings.ae_title, settings.port)
        node = start_node(settings)
        try:
            for model_id in node.ctx.registry.manifests:
                node.ctx.registry.get(model_id)
            splits = [routed_study(node, pacs, root / f"counts-{query}-in{i}", make_series(
                n_slices=args.slices, rows=args.size, columns=args.size, series_description="CRASHTEST T1",
                patient_id=f"BENCH-C{i}")) for i in range(args.studies)]
        finally:
            node.stop()
        rows[label] = {k: statistics.median(s[k] for s in splits) for k in COUNTS_COLUMNS}
    print(f"\ncounts vs idle: threshold model, {args.slices} slices routed by Orthanc, median of {args.studies} "
          "studies (seconds from the node's last acknowledged instance)")
    print("| completion | " + " | ".join(COUNTS_COLUMNS) + " |\n|---|" + "---|" * len(COUNTS_COLUMNS))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[k]:.3f}" for k in COUNTS_COLUMNS) + " |")


PRIORS_MANIFEST = "\n[input.priors]\ncount = 1\nmax_age_days = 3650\nsame_modality = true\n"


def prior_retrieval(root: Path, pacs: Orthanc, args: argparse.Namespace) -> None:
    """A 189-slice prior at Orthanc fetched for a job by C-GET and by C-MOVE: its size and time (the
    ``prior_study`` row), and the job's time with the comparison (the pipeline's "priors" stage)."""
    timings = Timings()
    logging.getLogger("dicomnode.pipeline").addHandler(timings)
    logging.getLogger("dicomnode.pipeline").setLevel(logging.INFO)
    models = write_threshold_model(root / "models-priors", 40.0, input_extra=PRIORS_MANIFEST).parent
    rows: list[tuple[str, str, int, float, float, float]] = []
    try:
        for how in ("get", "move"):
            prior = make_series(n_slices=args.slices, rows=args.size, columns=args.size, patient_id=f"BENCH-P-{how}",
                                series_description="CRASHTEST T1")
            for ds in prior:
                ds.StudyDate = "20240101"
            write_series(prior, root / f"prior-{how}")
            assert storescu(pacs.dicom_port, root / f"prior-{how}", called=pacs.aet).returncode == 0
            settings = Settings.load(None, data_dir=root / f"priors-{how}", port=free_port(), host="127.0.0.1",
                                     models_dir=models, min_free_disk_mb=1, study_idle_seconds=args.idle,
                                     pacs=Peer(ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port, query=True,
                                               retrieve=how))  # type: ignore[arg-type]
            pacs.add_modality("NODE", settings.ae_title, settings.port)
            node = start_node(settings)
            try:
                for model_id in node.ctx.registry.manifests:
                    node.ctx.registry.get(model_id)
                routed_study(node, pacs, root / f"priors-{how}-in", make_series(
                    n_slices=args.slices, rows=args.size, columns=args.size, series_description="CRASHTEST T1",
                    patient_id=f"BENCH-P-{how}"))
                with node.ctx.sessions() as session:
                    row = session.scalars(select(PriorStudy)).one()
                state, n, mib, seconds, job_id = row.state, row.instances, row.bytes / 2**20, row.seconds, row.job_id
                lap = wait_for(partial(timings.by_job.get, job_id), timeout=30, msg="job timings") or {}
                rows.append((how, state, n, mib, seconds, lap.get("priors", float("nan"))))
            finally:
                node.stop()
    finally:
        logging.getLogger("dicomnode.pipeline").removeHandler(timings)
    print(f"\npriors: a {args.slices}-slice prior ({args.size}x{args.size}) fetched for a job, then segmented")
    print("| retrieve | state | instances | MiB | retrieval s | priors stage s (find, fetch, segment) |\n"
          "|---|---|---|---|---|---|")
    for how, state, n, mib, seconds, stage in rows:
        print(f"| C-{how.upper()} | {state} | {n} | {mib:.1f} | {seconds:.2f} | {stage:.2f} |")


def _threshold_row(checkout: Path, args: argparse.Namespace) -> dict[str, float]:
    """The threshold case's medians, by stage, from this bench run in ``checkout`` (its own code)."""
    command = [sys.executable, "bench/latency.py", "--studies", str(args.studies), "--slices", str(args.slices),
               "--size", str(args.size)]
    done = subprocess.run(command, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("threshold model"))
    names = [c.strip() for c in lines[start + 1].strip("|").split("|")]
    values = [float(c) for c in lines[start + 3].strip("|").split("|")]
    return dict(zip(names, values, strict=True))


def compare(reference: Path, args: argparse.Namespace) -> None:
    """Reference and this checkout, alternating for ``args.rounds`` rounds; medians and ratios."""
    rows: dict[str, list[dict[str, float]]] = {"reference": [], "this": []}
    for _ in range(args.rounds):
        rows["reference"].append(_threshold_row(reference, args))
        rows["this"].append(_threshold_row(REPO, args))
    medians = {side: {k: statistics.median(r.get(k, float("nan")) for r in runs) for k in STAGES}
               for side, runs in rows.items()}
    print(f"\nthreshold model, {args.slices} slices: median of {args.rounds} rounds of {args.studies} studies "
          f"(seconds); reference {reference}")
    print("| | " + " | ".join(STAGES) + " |\n|---|" + "---|" * len(STAGES))
    for side in ("reference", "this"):
        print(f"| {side} | " + " | ".join(f"{medians[side][k]:.3f}" for k in STAGES) + " |")
    print("| ratio | " + " | ".join(f"{medians['this'][k] / medians['reference'][k]:.2f}x"
                                    if medians["reference"][k] > 0 else "-" for k in STAGES) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--slices", type=int, default=189)
    parser.add_argument("--size", type=int, default=256, help="rows and columns of the synthetic slices")
    parser.add_argument("--deepbet", action="store_true", help="also deepbet on the MNI152 template")
    parser.add_argument("--reference", type=Path, help="another checkout of the node to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="with --reference: rounds of both")
    parser.add_argument("--idle", type=float, default=5.0, help="study_idle_seconds of the counts vs idle table")
    parser.add_argument("--no-counts", action="store_true", help="leave out the counts vs idle table")
    parser.add_argument("--priors", action="store_true", help="also a prior's retrieval by C-GET and C-MOVE")
    parser.add_argument("--no-threshold", action="store_true", help="leave out the threshold stage table")
    args = parser.parse_args()
    if args.reference is not None:
        compare(args.reference.resolve(), args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pacs = Orthanc(root / "orthanc", receipts_enabled=False).start()
        try:
            common: dict[str, Any] = {
                "host": "127.0.0.1", "pacs": Peer(ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port),
                "peers": [Peer(ae_title="STORESCU", host="127.0.0.1")], "min_free_disk_mb": 1,
                "study_idle_seconds": 1.0, "sweep_interval_seconds": 0.1}
            models = write_threshold_model(root / "models", 40.0).parent
            settings = Settings.load(None, data_dir=root / "threshold", port=free_port(), models_dir=models, **common)
            if not args.no_threshold:
                run("threshold model (ONNX), synthetic MR", settings,
                    lambda i: make_series(n_slices=args.slices, rows=args.size, columns=args.size,
                                          series_description="CRASHTEST T1", patient_id=f"BENCH-{i}"),
                    args.studies, root)
            if not args.no_counts:
                counts_vs_idle(root, pacs, args)
            if args.priors:
                prior_retrieval(root, pacs, args)
            if args.deepbet and MNI.is_dir():
                from pydicom import dcmread
                from pydicom.uid import generate_uid

                def mni(i: int) -> list[Any]:
                    study, series = generate_uid(), generate_uid()
                    out = []
                    for path in sorted(p for p in MNI.rglob("*") if p.is_file()):
                        ds = dcmread(path)
                        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                        out.append(ds)
                    return out

                settings = Settings.load(None, data_dir=root / "deepbet", port=free_port(),
                                         rules=[Rule(name="all-mr", model="deepbet", match={"Modality": "^MR$"})],
                                         **common)
                run("deepbet (TorchScript), MNI152 template", settings, mni, args.studies, root)
        finally:
            pacs.stop()


if __name__ == "__main__":
    main()
