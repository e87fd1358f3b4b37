"""The data flow of one job, top to bottom: load -> volume or image -> infer -> build results -> write -> send.

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
from urllib.parse import urlsplit

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.config_store import runtime_destinations
from dicomnode.db import session_scope
from dicomnode.errors import ModelError, SendError, SeriesNotUsable, SourceMismatch
from dicomnode.files import fsync_dirs, write_atomic
from dicomnode.inference.registry import Manifest, Registry
from dicomnode.inference.result import ClassificationResult, InferenceResult, ModelInput, SegmentationResult
from dicomnode.inference.volume import Image, Volume, build_image, build_volume
from dicomnode.jobs.models import Delivery, Instance, Job, Study, StudySender
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.log import extra
from dicomnode.monitoring.models import ModelMetrics
from dicomnode.remote.backend import goes_remote, remote_backend
from dicomnode.remote.roundtrip import run_remote
from dicomnode.results.classification import build_classification_sr
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.notice import build_failure_notice
from dicomnode.results.overlay import build_overlays
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_explanation_seg, build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from dicomnode.send.scu import StoreOutcome, send_files
from dicomnode.send.stow import stow_files
from dicomnode.settings import Destination, Settings

log = logging.getLogger(__name__)

RESULTS_SUMMARY = "results.json"


@dataclass(frozen=True)
class PipelineContext:
    settings: Settings
    sessions: sessionmaker[Session]
    registry: Registry
    metrics: ModelMetrics | None = None


@dataclass(frozen=True)
class JobResult:
    """The written result files, the model's outputs (segment ml or class probability by name), a summary."""

    paths: tuple[Path, ...]
    outputs: dict[str, float]
    inference_seconds: float
    summary: str


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
        if str(ds.get(keyword, "") or "").rstrip("\x00 ").strip() != expected:  # as store.spool.clean_uid
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


def build_input(manifest: Manifest, datasets: list[Dataset]) -> ModelInput:
    """Stage 2: a volume or a single 2D image, as the manifest's input asks; SeriesNotUsable otherwise."""
    spec = manifest.input
    modality = str(datasets[0].get("Modality", "")) if datasets else ""
    if spec.modalities and modality not in spec.modalities:
        accepted = ", ".join(spec.modalities)
        raise SeriesNotUsable(f"model {manifest.id} takes {accepted}, not {modality or 'no modality'}")
    sop_class = str(datasets[0].get("SOPClassUID", "")) if datasets else ""
    if spec.sop_classes and sop_class not in spec.sop_classes:
        raise SeriesNotUsable(f"model {manifest.id} does not take SOP class {sop_class}")
    return build_volume(datasets, manifest.min_slices) if spec.dimensions == 3 else build_image(datasets)


def infer(ctx: PipelineContext, manifest: Manifest, image: ModelInput) -> tuple[InferenceResult, float]:
    """Stage 3: run the warm model; returns its result on the source grid and the seconds taken."""
    started = time.perf_counter()
    result = ctx.registry.run(manifest.id, image)
    seconds = time.perf_counter() - started
    shape = image.array.shape if isinstance(image, Volume) else (1, *image.array.shape)
    if isinstance(result, SegmentationResult) and result.labels.shape != shape:
        raise ModelError(f"model {manifest.id} returned a label map of shape {result.labels.shape} "
                         f"for a series of {shape}")
    return result, seconds


def _voxel_volume_mm3(image: ModelInput) -> float:
    return image.voxel_volume_mm3 if isinstance(image, Volume) else 0.0


def build_results(manifest: Manifest, image: ModelInput, result: InferenceResult, job: ClaimedJob,
                  explanation: str = "seg") -> tuple[list[Dataset], dict[str, float], str]:
    """Stage 4: the result objects in the source study, with deterministic UIDs; the outputs; a summary.

    A segmentation gives a SEG and a TID 1500 SR with each segment's volume; a classification gives a
    TID 1500 SR and, for the positive classes, the explanation as a fractional SEG (``explanation =
    "seg"``) or as secondary-capture overlays (``"sc"``).
    """
    sources = sanitise_headers(image.datasets)
    identity = ResultIdentity.for_job(job.series_uid, job.series_number, manifest, job.revision)
    order = image.in_source_order if isinstance(image, Volume) else (lambda a: a)
    if isinstance(result, ClassificationResult):
        maps = {c.spec: order(result.explanations[c.spec.index]) for c in result.classes
                if c.spec.index in result.explanations and float(result.explanations[c.spec.index].max()) > 0}
        evidence: list[Dataset] = []
        if maps and explanation == "sc" and isinstance(image, Image):
            evidence = list(build_overlays(sources[0], image.array, maps, manifest, identity))
        elif maps:
            evidence = [build_explanation_seg(sources, maps, manifest, identity)]
        sr = build_classification_sr(sources, result, manifest, identity, evidence)
        outputs = {c.spec.label: c.probability for c in result.classes}
        text = "; ".join(f"{c.spec.label} {c.probability:.3f} ({'present' if c.positive else 'absent'})"
                         for c in result.classes)
        return [*evidence, sr], outputs, text
    # nothing segmented: with a declared finding the SR alone says "absent"; without one, BuildError
    empty = result.finding is not None and not result.labels.any()
    seg = None if empty else build_seg(sources, order(result.labels), manifest, identity)
    if seg is not None and not isinstance(image, Volume):
        return [seg], {}, "segmentation of a 2D image"
    volumes = segment_volumes_ml(result.labels, _voxel_volume_mm3(image), manifest)
    sr = build_sr(seg, sources, volumes, manifest, identity, result.components, result.finding)
    outputs = {lab.label: volumes[lab.number] for lab in manifest.labels}
    text = ", ".join(f"{k}: {v:.1f} ml" for k, v in outputs.items())
    if result.finding is not None:
        outputs[result.finding.spec.name] = result.finding.probability
        text += (f"; {result.finding.spec.name} {result.finding.probability:.3f} "
                 f"({'present' if result.finding.positive else 'absent'}, {len(result.components)} component(s))")
    return [seg, sr] if seg is not None else [sr], outputs, text


def _write_dataset(path: Path, ds: Dataset, *, sync_dir: bool = True) -> None:
    """A Part-10 file of ``ds``, written atomically (owner-only: results carry PHI); with ``sync_dir``
    False the caller makes the name durable (:func:`~dicomnode.files.fsync_dirs`)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    write_atomic(path, buffer.getvalue(), sync_dir=sync_dir)


def write_results(results_dir: Path, job_id: int, objects: list[Dataset], outputs: dict[str, float],
                  inference_seconds: float, summary: str) -> JobResult:
    """Stage 5: the result files, written atomically under ``results/job-<id>/``, then ``results.json``.

    ``results.json`` is written last: when it exists, every result file is complete, and a retried job
    goes straight to delivery instead of running the model again. The result files' names are made
    durable by one fsync of the folder, before ``results.json`` is written.
    """
    folder = results_dir / f"job-{job_id}"
    paths = []
    for ds in objects:
        path = folder / f"{ds.Modality.lower()}-{ds.SOPInstanceUID}.dcm"
        _write_dataset(path, ds, sync_dir=False)
        paths.append(path)
    if paths:
        fsync_dirs([folder])
    result = JobResult(paths=tuple(paths), outputs=outputs, inference_seconds=inference_seconds, summary=summary)
    document = {"paths": [p.name for p in paths], "outputs": outputs, "inference_seconds": inference_seconds,
                "summary": summary}
    write_atomic(folder / RESULTS_SUMMARY, json.dumps(document).encode())
    return result


def written_results(results_dir: Path, job_id: int) -> JobResult | None:
    """The results an earlier attempt of this job wrote completely, if any."""
    folder = results_dir / f"job-{job_id}"
    try:
        document = json.loads((folder / RESULTS_SUMMARY).read_text())
        paths = tuple(folder / name for name in document["paths"])
        if not all(p.is_file() for p in paths):
            return None
        outputs = {str(k): float(v) for k, v in document["outputs"].items()}
        return JobResult(paths=paths, outputs=outputs, inference_seconds=float(document["inference_seconds"]),
                         summary=str(document["summary"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _already_stored(sessions: sessionmaker[Session], job_id: int, destination: str) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(Delivery.sop_instance_uid).where(
            Delivery.job_id == job_id, Delivery.destination == destination, Delivery.outcome == "stored")))


def _classify(failed: list[StoreOutcome]) -> bool:
    """Retryable when every failure is 'out of resources' (0xA7xx) or no answer at all."""
    return all(o.status is None or 0xA700 <= o.status <= 0xA7FF for o in failed)


def result_kind(ds: Dataset) -> str:
    """What a destination's ``send`` names a result by: "SR" for reports; "SEG" for the image results,
    segmentations and explanation maps alike (SC overlays carry their source's modality)."""
    return "SR" if str(ds.get("Modality", "")) == "SR" else "SEG"


def deliver(ctx: PipelineContext, job: ClaimedJob, paths: tuple[Path, ...]) -> None:
    """Stage 6: C-STORE each result not yet stored to each destination (the PACS, and any configured or
    added at run time, each taking the kinds of result it asks for); record each answer; raise unless all
    stored. Destinations are read afresh for every job, so that one added at run time gets the next results.

    Raises
    ------
    SendError
        ``retryable`` when a destination could not be reached or answered 0xA7xx (or not at all);
        permanent when every failing one rejected the association or answered another failure status.
    """
    with ctx.sessions() as session:
        rule = session.scalar(select(Job.rule).where(Job.id == job.id))
    destinations = runtime_destinations(ctx.settings, ctx.sessions, rule)
    if not destinations and _sent_by_dicomweb(ctx.sessions, job):
        return  # a cloud node: the sender fetches the results by WADO-RS
    if not destinations:
        raise SendError(f"no destination for rule {rule} (set DICOMNODE_PACS, or check the rule's destinations)",
                        retryable=False)
    headers = {p: dcmread(p, stop_before_pixels=True) for p in paths}
    errors: list[SendError] = []
    for destination in destinations:
        wanted = tuple(p for p in paths if result_kind(headers[p]) in destination.send)
        try:
            _deliver_to(ctx, job, destination, wanted, {p: str(headers[p].SOPInstanceUID) for p in wanted})
        except SendError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:  # each destination's deliveries are recorded: a retry resends only what is missing
        raise SendError("; ".join(map(str, errors)), retryable=any(e.retryable for e in errors))


def _send(settings: Settings, destination: Destination, paths: tuple[Path, ...]) -> list[StoreOutcome]:
    """C-STORE to a DIMSE destination, STOW-RS to a ``dicomweb`` one: the same outcomes either way."""
    if destination.kind == "dicomweb":
        return stow_files(settings, destination, paths)
    return send_files(settings, destination.peer, paths)


def _sent_by_dicomweb(sessions: sessionmaker[Session], job: ClaimedJob) -> bool:
    with sessions() as session:
        return session.scalar(select(StudySender.user).join(Study, StudySender.study_id == Study.id)
                              .where(Study.study_uid == job.study_uid).limit(1)) is not None


def _deliver_to(ctx: PipelineContext, job: ClaimedJob, destination: Destination, paths: tuple[Path, ...],
                uids: dict[Path, str]) -> None:
    target = str(destination)  # AE@host:port, or the DICOMweb URL
    actor = destination.ae_title or destination.name
    address = urlsplit(destination.url).hostname or "" if destination.kind == "dicomweb" else destination.host
    done = _already_stored(ctx.sessions, job.id, target)
    pending = tuple(p for p in paths if uids[p] not in done)
    if not pending:
        return
    with session_scope(ctx.sessions) as session:
        record(session, AuditEvent.BEGIN_TRANSFER_OUT, actor=ctx.settings.ae_title, **job.subject(), job_id=job.id,
               destination=target, instances=len(pending))
    try:
        outcomes = _send(ctx.settings, destination, pending)
    except SendError as exc:
        with session_scope(ctx.sessions) as session:
            record(session, AuditEvent.RESULT_SEND_FAILED, Outcome.SERIOUS_FAILURE, actor=actor,
                   **job.subject(), job_id=job.id, reason=str(exc))
        raise
    with session_scope(ctx.sessions) as session:
        for outcome in outcomes:
            status = f"0x{outcome.status:04X}" if outcome.status is not None else "none"
            session.add(Delivery(job_id=job.id, destination=target, sop_class_uid=outcome.sop_class_uid,
                                 sop_instance_uid=outcome.sop_instance_uid, path=str(outcome.path),
                                 status=outcome.status, outcome="stored" if outcome.stored else "failed"))
            record(session, AuditEvent.RESULT_SENT if outcome.stored else AuditEvent.RESULT_SEND_FAILED,
                   Outcome.SUCCESS if outcome.stored else Outcome.SERIOUS_FAILURE, actor=actor,
                   **job.subject(), job_id=job.id, address=address,
                   sop_instance_uid=outcome.sop_instance_uid, sop_classes={outcome.sop_class_uid: 1}, status=status)
    failed = [o for o in outcomes if not o.stored]
    if failed:
        codes = ", ".join("no answer" if o.status is None else f"0x{o.status:04X}" for o in failed)
        raise SendError(f"{len(failed)} of {len(outcomes)} result(s) not stored by {target}: {codes}",
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
        backend = remote_backend(manifest)
        if goes_remote(manifest, backend, ctx.sessions) and backend is not None:  # edge -> cloud
            started = time.perf_counter()
            objects = run_remote(ctx.settings, ctx.sessions, job, backend, datasets)
            clock.lap("remote")
            result = write_results(ctx.settings.results_dir, job.id, objects, {}, time.perf_counter() - started,
                                   "computed remotely")
        else:
            image = build_input(manifest, datasets)
            clock.lap("load")
            inferred, seconds = infer(ctx, manifest, image)
            clock.lap("model")
            log.info("inference done", extra=extra(stage="infer", job_id=job.id, seconds=round(seconds, 2),
                                                   shape="x".join(map(str, image.array.shape))))
            explanation = ctx.settings.pacs.explanation if ctx.settings.pacs is not None else "seg"
            objects, outputs, summary = build_results(manifest, image, inferred, job, explanation)
            clock.lap("build")
            result = write_results(ctx.settings.results_dir, job.id, objects, outputs, seconds, summary)
            if ctx.metrics is not None:
                ctx.metrics.observe(manifest.id, seconds, outputs)
                for warning in ctx.metrics.warnings():
                    log.warning("drift: %s", warning, extra=extra(stage="infer", job_id=job.id, model=manifest.id))
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
