"""The data flow of one job, top to bottom: load -> volume -> infer -> build SEG/SR -> write -> send.

Each stage is one function with typed input and output. :func:`run_job` raises
:class:`~dicomnode.errors.SeriesNotUsable` when the model cannot take the series (the job is skipped)
and other :class:`~dicomnode.errors.DicomNodeError` subclasses when it fails.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.errors import ModelError, SendError, SeriesNotUsable, SourceMismatch
from dicomnode.inference.registry import Manifest, Registry
from dicomnode.inference.volume import Volume, build_volume
from dicomnode.jobs.models import Delivery, Instance
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.log import extra
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.notice import build_failure_notice
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from dicomnode.send.scu import StoreOutcome, send_files
from dicomnode.settings import Settings
from dicomnode.store.spool import write_atomic

log = logging.getLogger(__name__)

RESULTS_SUMMARY = "results.json"


@dataclass(frozen=True)
class PipelineContext:
    settings: Settings
    sessions: sessionmaker[Session]
    registry: Registry


@dataclass(frozen=True)
class JobResult:
    paths: tuple[Path, ...]
    volumes_ml: dict[int, float]
    inference_seconds: float


def _instance_rows(sessions: sessionmaker[Session], job: ClaimedJob) -> list[tuple[str, str]]:
    """(path, SOP Instance UID) of the series' instances, in the order they were recorded."""
    with sessions() as session:
        rows = session.execute(select(Instance.path, Instance.sop_instance_uid)
                               .where(Instance.series_id == job.series_id).order_by(Instance.id)).all()
    return [(str(path), str(sop)) for path, sop in rows]


def check_source(ds: Dataset, job: ClaimedJob, sop_instance_uid: str) -> None:
    """Raise :class:`SourceMismatch` unless ``ds`` carries the study, series and SOP UIDs of its row."""
    for keyword, expected in (("StudyInstanceUID", job.study_uid), ("SeriesInstanceUID", job.series_uid),
                              ("SOPInstanceUID", sop_instance_uid)):
        if str(ds.get(keyword, "")).rstrip("\x00 ") != expected:
            raise SourceMismatch(f"a spooled file's {keyword} differs from the database: series not used")


def load_series(sessions: sessionmaker[Session], job: ClaimedJob) -> list[Dataset]:
    """Stage 1: the series' instances from the spool; audited as DICOM Instances Accessed.

    Raises
    ------
    SourceMismatch
        When a file does not carry the UIDs the database holds for it: the job stops, nothing is built.
    """
    rows = _instance_rows(sessions, job)
    try:
        datasets: list[Dataset] = [dcmread(path, force=True) for path, _ in rows]
    except Exception as exc:
        raise SeriesNotUsable(f"instances could not be read: {type(exc).__name__}") from exc
    for ds, (_, sop) in zip(datasets, rows, strict=True):
        check_source(ds, job, sop)
    with session_scope(sessions) as session:
        record(session, AuditEvent.INSTANCES_ACCESSED, actor=f"{job.model_id} {job.model_version}",
               **job.subject(), job_id=job.id, series_uid=job.series_uid, instances=len(datasets),
               sop_classes=dict(Counter(str(ds.get("SOPClassUID", "")) for ds in datasets)))
    return datasets


def infer(ctx: PipelineContext, manifest: Manifest, volume: Volume) -> tuple[np.ndarray, float]:
    """Stage 3: run the warm model; returns the label map on the source grid and the seconds taken."""
    model = ctx.registry.get(manifest.id)
    started = time.perf_counter()
    mask = model.predict(volume.array, volume.affine)
    seconds = time.perf_counter() - started
    if mask.shape != volume.array.shape:
        raise ModelError(f"model returned shape {mask.shape} for a volume of {volume.array.shape}")
    return np.asarray(mask).astype(np.uint8), seconds


def build_results(manifest: Manifest, volume: Volume, labels: np.ndarray, job: ClaimedJob
                  ) -> tuple[list[Dataset], dict[int, float]]:
    """Stage 4: SEG and TID 1500 SR in the source study, with deterministic UIDs."""
    sources = sanitise_headers(volume.datasets)
    identity = ResultIdentity.for_job(job.series_uid, job.series_number, manifest, job.revision)
    seg = build_seg(sources, labels, manifest, identity)
    volumes = segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest)
    sr = build_sr(seg, sources, volumes, manifest, identity)
    return [seg, sr], volumes


def _write_dataset(path: Path, ds: Dataset) -> None:
    """A Part-10 file of ``ds``, written atomically (owner-only: results carry PHI)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    write_atomic(path, buffer.getvalue())


def write_results(results_dir: Path, job_id: int, objects: list[Dataset], volumes_ml: dict[int, float],
                  inference_seconds: float) -> JobResult:
    """Stage 5: the result files, written atomically under ``results/job-<id>/``, then ``results.json``.

    ``results.json`` is written last: when it exists, every result file is complete, and a retried job
    goes straight to delivery instead of running the model again.
    """
    folder = results_dir / f"job-{job_id}"
    paths = []
    for ds in objects:
        path = folder / f"{ds.Modality.lower()}-{ds.SOPInstanceUID}.dcm"
        _write_dataset(path, ds)
        paths.append(path)
    result = JobResult(paths=tuple(paths), volumes_ml=volumes_ml, inference_seconds=inference_seconds)
    summary = {"paths": [p.name for p in paths], "volumes_ml": volumes_ml, "inference_seconds": inference_seconds}
    write_atomic(folder / RESULTS_SUMMARY, json.dumps(summary).encode())
    return result


def written_results(results_dir: Path, job_id: int) -> JobResult | None:
    """The results an earlier attempt of this job wrote completely, if any."""
    folder = results_dir / f"job-{job_id}"
    try:
        summary = json.loads((folder / RESULTS_SUMMARY).read_text())
        paths = tuple(folder / name for name in summary["paths"])
        if not all(p.is_file() for p in paths):
            return None
        volumes = {int(k): float(v) for k, v in summary["volumes_ml"].items()}
        return JobResult(paths=paths, volumes_ml=volumes, inference_seconds=float(summary["inference_seconds"]))
    except (OSError, ValueError, KeyError):
        return None


def _already_stored(sessions: sessionmaker[Session], job_id: int, destination: str) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(Delivery.sop_instance_uid).where(
            Delivery.job_id == job_id, Delivery.destination == destination, Delivery.outcome == "stored")))


def _classify(failed: list[StoreOutcome]) -> bool:
    """Retryable when every failure is 'out of resources' (0xA7xx) or no answer at all."""
    return all(o.status is None or 0xA700 <= o.status <= 0xA7FF for o in failed)


def deliver(ctx: PipelineContext, job: ClaimedJob, paths: tuple[Path, ...]) -> None:
    """Stage 6: C-STORE each result not yet stored to the PACS, record each answer; raise unless all stored.

    Raises
    ------
    SendError
        ``retryable`` when the PACS could not be reached or answered 0xA7xx (or not at all); permanent
        when it rejected the association or answered another failure status.
    """
    peer = ctx.settings.pacs
    if peer is None:
        raise SendError("no destination configured (set DICOMNODE_PACS)", retryable=False)
    done = _already_stored(ctx.sessions, job.id, str(peer))
    pending = tuple(p for p in paths if dcmread(p, stop_before_pixels=True).SOPInstanceUID not in done)
    if not pending:
        return
    with session_scope(ctx.sessions) as session:
        record(session, AuditEvent.BEGIN_TRANSFER_OUT, actor=ctx.settings.ae_title, **job.subject(), job_id=job.id,
               destination=str(peer), instances=len(pending))
    try:
        outcomes = send_files(ctx.settings, peer, pending)
    except SendError as exc:
        with session_scope(ctx.sessions) as session:
            record(session, AuditEvent.RESULT_SEND_FAILED, Outcome.SERIOUS_FAILURE, actor=peer.ae_title,
                   **job.subject(), job_id=job.id, reason=str(exc))
        raise
    with session_scope(ctx.sessions) as session:
        for outcome in outcomes:
            status = f"0x{outcome.status:04X}" if outcome.status is not None else "none"
            session.add(Delivery(job_id=job.id, destination=str(peer), sop_class_uid=outcome.sop_class_uid,
                                 sop_instance_uid=outcome.sop_instance_uid, path=str(outcome.path),
                                 status=outcome.status, outcome="stored" if outcome.stored else "failed"))
            record(session, AuditEvent.RESULT_SENT if outcome.stored else AuditEvent.RESULT_SEND_FAILED,
                   Outcome.SUCCESS if outcome.stored else Outcome.SERIOUS_FAILURE, actor=peer.ae_title,
                   **job.subject(), job_id=job.id, address=peer.host,
                   sop_instance_uid=outcome.sop_instance_uid, sop_classes={outcome.sop_class_uid: 1}, status=status)
    failed = [o for o in outcomes if not o.stored]
    if failed:
        codes = ", ".join("no answer" if o.status is None else f"0x{o.status:04X}" for o in failed)
        raise SendError(f"{len(failed)} of {len(outcomes)} result(s) not stored by {peer}: {codes}",
                        retryable=_classify(failed))


def run_job(ctx: PipelineContext, job: ClaimedJob) -> JobResult:
    """The whole flow for one job; a retry resumes at delivery when the results were already written.

    The seconds each stage took are logged once per job ("job timings"; bench/latency.py reads them).
    """
    clock = _Stopwatch()
    result = written_results(ctx.settings.results_dir, job.id)
    if result is None:
        manifest = ctx.registry.manifests.get(job.model_id)
        if manifest is None or manifest.version != job.model_version:
            raise ModelError(f"model {job.model_id} {job.model_version} is not installed")
        datasets = load_series(ctx.sessions, job)
        volume = build_volume(datasets, manifest.min_slices)
        clock.lap("load")
        labels, seconds = infer(ctx, manifest, volume)
        clock.lap("model")
        log.info("inference done", extra=extra(stage="infer", job_id=job.id, seconds=round(seconds, 2),
                                               shape="x".join(map(str, volume.array.shape))))
        objects, volumes = build_results(manifest, volume, labels, job)
        clock.lap("build")
        result = write_results(ctx.settings.results_dir, job.id, objects, volumes, seconds)
        clock.lap("write")
    deliver(ctx, job, result.paths)
    clock.lap("send")
    log.info("job timings", extra=extra(stage="worker", job_id=job.id, **clock.laps))
    return result


class _Stopwatch:
    """Seconds per named stage, each from the end of the one before."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now


def _notice_source(ctx: PipelineContext, job: ClaimedJob) -> Dataset:
    """The header of the first source file that carries the job's own UIDs (never another study's)."""
    for path, sop in _instance_rows(ctx.sessions, job):
        try:
            ds = dcmread(path, stop_before_pixels=True, force=True)
            check_source(ds, job, sop)
        except Exception:  # unreadable or another study's file: try the next one
            continue
        return ds
    raise SendError("the source series has no instance that carries its own UIDs", retryable=False)


def send_failure_notice(ctx: PipelineContext, job: ClaimedJob, reason: str) -> bool:
    """Best effort: put an "AI result not available: <reason>" SR into the study; True when stored."""
    manifest = ctx.registry.manifests.get(job.model_id)
    peer = ctx.settings.pacs
    try:
        if manifest is None or peer is None:
            raise SendError("no model manifest or no destination for the notice", retryable=False)
        source = sanitise_headers([_notice_source(ctx, job)])
        notice = build_failure_notice(source, manifest, reason, job.series_number, job.revision)
        folder = ctx.settings.results_dir / f"job-{job.id}"
        notice_path = folder / f"notice-{notice.SOPInstanceUID}.dcm"
        _write_dataset(notice_path, notice)
        (outcome,) = send_files(ctx.settings, peer, [notice_path])
        stored = outcome.stored
        detail = f"0x{outcome.status:04X}" if outcome.status is not None else "no answer"
    except Exception as exc:  # a notice must never take the worker down
        stored, detail = False, f"{type(exc).__name__}: {exc}"
    with session_scope(ctx.sessions) as session:
        record(session, AuditEvent.RESULT_SENT if stored else AuditEvent.RESULT_SEND_FAILED,
               Outcome.SUCCESS if stored else Outcome.SERIOUS_FAILURE, actor=peer.ae_title if peer else "",
               **job.subject(), job_id=job.id, kind="failure_notice",
               status=detail)
    log.info("failure notice", extra=extra(stage="send", job_id=job.id, stored=stored))
    return stored
