"""``dicomnode models``: list the installed models, verify them, and try one on a series on disk.

``run`` goes through the same stages as a job (volume or image -> warm model -> result objects) and
writes what the node would send into a folder, so that a site can try a model before routing studies
to it. Every failure is a :class:`~dicomnode.errors.DicomNodeError` with a one-sentence message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.errors import DicomNodeError, ModelError
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.registry import Registry
from dicomnode.inference.result import ClassificationResult, ModelInput
from dicomnode.inference.volume import Image, Volume
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.pipeline import _write_dataset, build_input, build_results


@dataclass(frozen=True)
class ModelRow:
    id: str
    version: str
    task: str
    backend: str
    device: str
    warm: bool
    error: str = ""


def list_models(registry: Registry, load: bool) -> list[ModelRow]:
    """One row per model folder; with ``load``, each model is loaded (warm) and reports its device."""
    rows = []
    for manifest in registry.manifests.values():
        device, error = "-", ""
        if load:
            try:
                device = registry.get(manifest.id).device
            except DicomNodeError as exc:
                error = str(exc)
        rows.append(ModelRow(manifest.id, manifest.version, manifest.task, manifest.backend, device,
                             registry.is_warm(manifest.id), error))
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
            _write_dataset(output / f"{ds.Modality.lower()}-{ds.SOPInstanceUID}.dcm", ds)
        findings.append(f"series {job.series_number}: {summary} ({len(objects)} object(s) written)")
    return findings
