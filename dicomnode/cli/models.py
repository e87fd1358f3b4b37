"""``dicomnode models``: list the installed models, verify them, and try one on a series on disk.

``run`` goes through the same stages as a job (volume or image -> warm model -> result objects) and
writes what the node would send into a folder, so that a site can try a model before routing studies
to it. Every failure is a :class:`~dicomnode.errors.DicomNodeError` with a one-sentence message.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.cli import context
from dicomnode.cli.context import Failure
from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.errors import DicomNodeError, ModelError
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.registry import Registry, RuntimeOptions, suspended
from dicomnode.inference.result import ClassificationResult, ModelInput
from dicomnode.inference.volume import Image, Volume
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.pipeline import build_input, build_results
from dicomnode.results.files import result_file_name, write_dataset

models_app = typer.Typer(no_args_is_help=True, help="the installed models: list, verify, try one on a series")


@dataclass(frozen=True)
class ModelRow:
    id: str
    version: str
    task: str
    backend: str
    device: str
    warm: bool
    error: str = ""
    unavailable: str = ""  # why the model cannot run (its rules are suspended): a file or, with load, the load
    off: str = ""  # why its rules route nothing although it can run (a demonstration model, demo_models off)


def list_models(registry: Registry, load: bool, demo_models: bool = False) -> list[ModelRow]:
    """One row per model folder, each checked as the node checks it at start (its files' SHA-256; with
    ``load``, a load too, after which it is warm and reports its device)."""
    unavailable = registry.check(load=load)
    held = suspended(registry.manifests, unavailable, demo_models)
    rows = []
    for manifest in registry.manifests.values():
        warm = registry.is_warm(manifest.id)
        rows.append(ModelRow(manifest.id, manifest.version, manifest.task, manifest.backend,
                             registry.get(manifest.id).device if warm else "-", warm,
                             unavailable=unavailable.get(manifest.id, ""),
                             off="" if manifest.id in unavailable else held.get(manifest.id, "")))
    rows += [ModelRow(folder, "-", "-", "-", "-", False, error) for folder, error in registry.errors.items()
             if folder not in registry.manifests]
    return rows


def synthetic_input(manifest: Manifest) -> ModelInput:
    """A smooth random input of the shape the manifest declares (seeded: the same every time)."""
    spec = manifest.input
    rng = np.random.default_rng(0)
    if spec.dimensions == 2:
        rows, columns = spec.size or (256, 256)
        ds = Dataset()
        ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 12, 0
        ds.Modality = spec.modalities[0] if spec.modalities else "DX"
        return Image(array=rng.uniform(0, 4095, (rows, columns)).astype(np.float32), dataset=ds)
    shape = tuple(spec.size) if spec.size else (max(spec.min_slices, 32), 64, 64)
    if spec.tiling is not None:
        shape = tuple(max(s, r) for s, r in zip(shape, spec.tiling.roi, strict=True))
    grid = np.indices(shape, dtype=np.float32)
    centre = np.array(shape, dtype=np.float32).reshape(3, 1, 1, 1) / 2
    ball = np.exp(-np.sum(((grid - centre) / (centre / 2)) ** 2, axis=0))
    array = (1000 * ball + rng.normal(0, 10, shape)).astype(np.float32)
    return Volume(array=array, affine=np.eye(4), datasets=())


def verify_model(registry: Registry, model_id: str) -> str:
    """Checksums, a load, and one run on a synthetic input; returns a summary, raises ModelError."""
    manifest = registry.manifests.get(model_id)
    if manifest is None:
        raise ModelError(registry.errors.get(model_id, f"no model {model_id!r} under the models directory"))
    for file in manifest.required_files:
        manifest.resolve(file)
    model = registry.get(model_id)
    result = registry.run(model_id, synthetic_input(manifest))
    if isinstance(result, ClassificationResult):
        outcome = ", ".join(f"{c.spec.label} {c.probability:.3f}" for c in result.classes)
    else:
        outcome = f"{int(np.count_nonzero(result.labels))} voxels labelled"
    return f"checksums ok, loaded on {model.device}, synthetic run ok ({outcome})"


def _series(path: Path) -> Iterator[list[Dataset]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    by_series: dict[str, list[Dataset]] = {}
    for file in files:
        try:
            ds = dcmread(file, force=False)
        except (InvalidDicomError, OSError):
            continue
        if "PixelData" in ds:
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if not by_series:
        raise DicomNodeError(f"no DICOM images found in {path}")
    yield from by_series.values()


def run_model(registry: Registry, model_id: str, path: Path, output: Path) -> list[str]:
    """Run ``model_id`` on each image series under ``path``; write its results into ``output``; the findings."""
    manifest = registry.manifests.get(model_id)
    if manifest is None:
        raise ModelError(registry.errors.get(model_id, f"no model {model_id!r} under the models directory"))
    findings = []
    for number, datasets in enumerate(_series(path), start=1):
        image = build_input(manifest, datasets)
        result = registry.run(model_id, image)
        first = datasets[0]
        job = ClaimedJob(id=number, series_id=number, series_uid=str(first.SeriesInstanceUID),
                         series_number=int(first.get("SeriesNumber", 0) or 0), study_uid=str(first.StudyInstanceUID),
                         patient_id=None, patient_name=None, model_id=model_id, model_version=manifest.version,
                         revision=1, attempts=1)
        objects, _, summary = build_results(manifest, image, result, job)
        for ds in objects:
            write_dataset(output / result_file_name(ds), ds)
        findings.append(f"series {job.series_number}: {summary} ({len(objects)} object(s) written)")
    return findings


# -- the commands -----------------------------------------------------------------------------------
def _registry(ctx: typer.Context) -> Registry:
    settings = context.settings(ctx)
    return Registry(settings.models_dir, options=RuntimeOptions(
        device=settings.device, threads=settings.inference_threads, concurrency=settings.inference_concurrency))


@models_app.command("list")
def list_command(ctx: typer.Context, load: Annotated[bool, typer.Option(
        "--load", help="load each model (shows its device)")] = False) -> None:
    """id, version, task, backend, device, warm or not"""
    from dicomnode.fl.candidate import candidates

    print(f"{'id':24} {'version':10} {'task':15} {'backend':8} {'device':6} warm")
    rows = list_models(_registry(ctx), load, context.settings(ctx).demo_models)
    for row in rows:
        print(f"{row.id:24} {row.version:10} {row.task:15} {row.backend:8} {row.device:6} "
              f"{'yes' if row.warm else 'no'}" + (f"  ERROR: {row.error}" if row.error else "")
              + (f"  UNAVAILABLE (its rules are suspended): {row.unavailable}" if row.unavailable else "")
              + (f"  NOT ROUTED: {row.off}" if row.off else ""))
    for candidate in candidates(context.settings(ctx).models_dir):
        gate = "passed the gate" if candidate.passes_gate else "not promoted: worse at a site"
        print(f"  candidate {candidate.name} of {candidate.model} {candidate.base_version} "
              f"({len(candidate.rounds)} rounds, {gate})")
    failed = sum(1 for row in rows if row.error or row.unavailable)
    if failed:
        raise Failure(f"{failed} of {len(rows)} model(s) could not be read or loaded (ERROR, UNAVAILABLE above)")


@models_app.command("verify")
def verify_command(ctx: typer.Context, model: Annotated[str | None, typer.Argument(
        help="one model id (default: every model)")] = None) -> None:
    """checksums, a load test, a run on a synthetic input"""
    registry = _registry(ctx)
    ids = [model] if model else sorted({*registry.manifests, *registry.errors})
    failed = 0
    for model_id in ids:
        try:
            print(f"{model_id}: {verify_model(registry, model_id)}")
        except DicomNodeError as exc:
            failed += 1
            print(f"{model_id}: FAILED: {exc}", file=sys.stderr)
    if failed:
        raise Failure(f"{failed} of {len(ids)} model(s) did not pass verification")


@models_app.command("run")
def run_command(ctx: typer.Context, model: str,
                path: Annotated[Path, typer.Argument(help="a DICOM file or a folder of one or more series")],
                output: Annotated[Path, typer.Option(help="folder for the SEG/SR/SC files")] = Path("dicomnode-run")
                ) -> None:
    """run a model on a series on disk and write the results it would send"""
    for line in run_model(_registry(ctx), model, path, output):
        print(line)
    print(f"results written to {output}")


@models_app.command("evaluate")
def evaluate_command(ctx: typer.Context, model: str, since: Annotated[dt.datetime | None, typer.Option(
        parser=context.timestamp, help="ISO date/time, inclusive (UTC unless given)")] = None) -> None:
    """the model's results against readers' corrected SEGs"""
    from dicomnode.evaluation.report import print_evaluation

    print_evaluation(make_sessionmaker(make_engine(context.settings(ctx).db_url)), model, since)
