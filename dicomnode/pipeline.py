"""The data flow of one job, top to bottom: load -> volume or image -> infer -> build results -> write -> send.

Each stage is one function with typed input and output; the results are written into their folder by
:mod:`dicomnode.results.files` and sent through the delivery ledger, :mod:`dicomnode.send.deliver`.
:func:`run_job` raises
:class:`~dicomnode.errors.SeriesNotUsable` when the model cannot take the series (the job is skipped)
and other :class:`~dicomnode.errors.DicomNodeError` subclasses when it fails.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.config_store import runtime_destinations
from dicomnode.db import session_scope
from dicomnode.errors import ModelError, SendError, SeriesNotUsable, SourceMismatch
from dicomnode.inference.registry import Manifest, Registry
from dicomnode.inference.result import ClassificationResult, InferenceResult, ModelInput, SegmentationResult
from dicomnode.inference.volume import Image, Volume, build_image, build_volume
from dicomnode.jobs.models import Instance, Job
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.log import extra
from dicomnode.monitoring.models import ModelMetrics
from dicomnode.query.compare import compare_with_priors
from dicomnode.remote.backend import remote_backend, runs_remote
from dicomnode.remote.roundtrip import run_remote
from dicomnode.results import longitudinal
from dicomnode.results.classification import build_classification_sr
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.files import JobResult, notice_path, write_dataset, write_results, written_results
from dicomnode.results.longitudinal import Comparison
from dicomnode.results.notice import build_failure_notice
from dicomnode.results.overlay import build_overlays
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_explanation_seg, build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from dicomnode.send.deliver import deliver_results
from dicomnode.send.scu import send_files
from dicomnode.settings import Settings
from dicomnode.store.part10 import read_to_pixels

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PipelineContext:
    settings: Settings
    sessions: sessionmaker[Session]
    registry: Registry
    metrics: ModelMetrics | None = None


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
                  explanation: str = "seg", comparison: Comparison | None = None
                  ) -> tuple[list[Dataset], dict[str, float], str]:
    """Stage 4: the result objects in the source study, with deterministic UIDs; the outputs; a summary.

    A segmentation gives a SEG and a TID 1500 SR with each segment's volume; a classification gives a
    TID 1500 SR and, for the positive classes, the explanation as a binary SEG of its evidence region
    (``explanation = "seg"``) or as secondary-capture overlays (``"sc"``).
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
        sr = build_classification_sr(sources, result, manifest, identity, evidence,
                                     {spec.index: heat for spec, heat in maps.items()})
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
    amend = None if comparison is None else (  # the prior's volumes, or why there is no comparison
        lambda groups: longitudinal.amend(comparison, volumes, sources, manifest, identity, groups))
    sr = build_sr(seg, sources, volumes, manifest, identity, result.components, result.finding,
                  image.frame_order if isinstance(image, Volume) else (), amend=amend)
    outputs = {lab.label: volumes[lab.number] for lab in manifest.labels}
    text = ", ".join(f"{k}: {v:.1f} ml" for k, v in outputs.items())
    if result.finding is not None:
        outputs[result.finding.spec.name] = result.finding.probability
        text += (f"; {result.finding.spec.name} {result.finding.probability:.3f} "
                 f"({'present' if result.finding.positive else 'absent'}, {len(result.components)} component(s))")
    return [seg, sr] if seg is not None else [sr], outputs, text


def _segment(ctx: PipelineContext, manifest: Manifest, volume: Volume) -> SegmentationResult:
    """The job's model on a prior series (:mod:`dicomnode.query.compare`)."""
    result, _ = infer(ctx, manifest, volume)
    if not isinstance(result, SegmentationResult):
        raise ModelError(f"model {manifest.id} gave no label map for the prior")
    return result


def deliver(ctx: PipelineContext, job: ClaimedJob, paths: tuple[Path, ...]) -> None:
    """Stage 6: the results to each destination (the PACS, and any configured or added at run time), through
    the delivery ledger (:func:`~dicomnode.send.deliver.deliver_results`). Destinations are read afresh for
    every job, so that one added at run time gets the next results.

    Raises
    ------
    SendError
        As :func:`~dicomnode.send.deliver.deliver_results` raises it.
    """
    with ctx.sessions() as session:
        rule = session.scalar(select(Job.rule).where(Job.id == job.id))
    destinations = runtime_destinations(ctx.settings, ctx.sessions, rule)
    deliver_results(ctx.settings, ctx.sessions, job, destinations, paths, rule)


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
        if runs_remote(manifest, backend, ctx.sessions, datasets, job.id) and backend is not None:  # edge -> cloud
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
            comparison = None
            if manifest.input.priors is not None and isinstance(inferred, SegmentationResult) \
                    and isinstance(image, Volume):  # [input.priors]: the prior's volumes, or why none
                comparison = compare_with_priors(ctx.settings, ctx.sessions, manifest, job, image,
                                                 lambda prior: _segment(ctx, manifest, prior))
                clock.lap("priors")
            objects, outputs, summary = build_results(manifest, image, inferred, job, explanation, comparison)
            clock.lap("build")
            result = write_results(ctx.settings.results_dir, job.id, objects, outputs, seconds, summary)
            if ctx.metrics is not None:
                ctx.metrics.observe(manifest.id, seconds, outputs, inferred.distribution)
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
            ds = read_to_pixels(Path(path), ctx.settings.max_inflated_bytes)
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
        path = notice_path(ctx.settings.results_dir, job.id, notice)
        write_dataset(path, notice)
        (outcome,) = send_files(ctx.settings, peer, [path])
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
