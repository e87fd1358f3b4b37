"""``dicomnode export training --model M [--since DATE] OUT/``: de-identified volumes and labels.

For each succeeded job of the model (the latest revision of each series), the source series goes through
the edge-cloud de-identification (:func:`dicomnode.remote.deid.deidentify`, PS3.15 Annex E Table E.1-1,
the Basic profile), and only its voxels and geometry are written, as NIfTI:
``imagesTr/case-NNNN.nii.gz``. The label is the readers' reference SEG when one was evaluated for that job, otherwise
the node's own SEG, marked as a pseudo-label: ``labelsTr/case-NNNN.nii.gz``, on the image's grid, with
segment numbers as values. ``datalist.json`` lists the cases as MONAI's ``load_decathlon_datalist``
reads them. Case names are counters: no UID, name, ID, date or accession number is written anywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import DicomNodeError
from dicomnode.evaluation.compare import segment_masks
from dicomnode.inference.volume import Volume, build_volume
from dicomnode.jobs.models import Instance, Job, ReferenceObject
from dicomnode.jobs.status import JobStatus
from dicomnode.remote.deid import deidentify
from dicomnode.results.files import node_seg_path

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NOTICE = "de-identified training export of dicomnode; labels may be the model's own (pseudo_label)"


class ExportError(DicomNodeError):
    """The training export could not be written."""


@dataclass(frozen=True)
class Case:
    job_id: int
    paths: list[str]
    label_path: Path
    pseudo: bool


def _latest_jobs(session: Session, model: str, since: dt.datetime | None) -> list[Job]:
    where = [Job.model_id == model, Job.status == JobStatus.SUCCEEDED]
    if since is not None:
        where.append(Job.updated_at >= since)
    latest: dict[int, Job] = {}
    for job in session.scalars(select(Job).where(*where).order_by(Job.id)):
        if job.series_id not in latest or job.revision >= latest[job.series_id].revision:
            latest[job.series_id] = job
    return sorted(latest.values(), key=lambda j: j.id)


def _reference_path(session: Session, job_id: int) -> Path | None:
    uid = session.scalar(select(ReferenceObject.sop_instance_uid).where(
        ReferenceObject.job_id == job_id, ReferenceObject.outcome == "evaluated").order_by(ReferenceObject.id.desc()))
    if uid is None:
        return None
    path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == uid))
    return Path(path) if path is not None and Path(path).is_file() else None


def cases(sessions: sessionmaker[Session], results_dir: Path, model: str, since: dt.datetime | None) -> list[Case]:
    """The jobs to export, each with its source files and label SEG (a reference, else the node's own)."""
    out = []
    with sessions() as session:
        for job in _latest_jobs(session, model, since):
            paths = [p for p in session.scalars(select(Instance.path).where(Instance.series_id == job.series_id)
                                                .order_by(Instance.id)) if Path(p).is_file()]
            reference = _reference_path(session, job.id)
            label = reference or node_seg_path(results_dir, job.id)
            if paths and label is not None:
                out.append(Case(job.id, paths, label, pseudo=reference is None))
    return out


def label_volume(volume: Volume, seg: Dataset, uid_map: dict[str, str]) -> np.ndarray:
    """The SEG's segments on the volume's grid (slice, row, column), segment numbers as values.

    ``uid_map`` maps the original SOP Instance UIDs the SEG references to the volume's (de-identified) ones.
    """
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(volume.datasets)}
    for number, segment in segment_masks(seg).items():
        for key, mask in segment.frames.items():
            k = index.get(uid_map.get(key, key))
            if k is not None and mask.shape == labels.shape[1:]:
                labels[k][mask] = number
    return labels


def _nifti(array: np.ndarray, affine_lps: np.ndarray, dtype: type) -> nib.Nifti1Image:
    """(slice, row, column) -> NIfTI axes (column, row, slice), with the affine to RAS."""
    data: np.ndarray = np.ascontiguousarray(np.transpose(array, (2, 1, 0)).astype(dtype))
    image = nib.Nifti1Image(data, LPS_TO_RAS @ affine_lps[:, [2, 1, 0, 3]])
    image.header["descrip"] = b"dicomnode training export"
    return image


def write_case(case: Case, name: str, out: Path, seed: str) -> dict[str, object]:
    """Write one case's image and label; its datalist entry."""
    originals: list[Dataset] = [dcmread(p, force=True) for p in case.paths]
    copies, uid_map = deidentify(originals, seed)
    volume = build_volume(copies)
    labels = label_volume(volume, dcmread(case.label_path), uid_map)
    image_rel, label_rel = f"imagesTr/{name}.nii.gz", f"labelsTr/{name}.nii.gz"
    nib.save(_nifti(volume.array, volume.affine, np.float32), out / image_rel)
    nib.save(_nifti(labels, volume.affine, np.uint8), out / label_rel)
    return {"image": image_rel, "label": label_rel, "pseudo_label": case.pseudo,
            "label_source": "node" if case.pseudo else "reference"}


def export_training(sessions: sessionmaker[Session], results_dir: Path, model: str, out: Path,
                    since: dt.datetime | None = None, progress: Callable[[int, int], None] | None = None) -> int:
    """Write the export (module docstring) to ``out``; returns the number of cases."""
    todo = cases(sessions, results_dir, model, since)
    if not todo:
        raise ExportError(f"no succeeded job of model {model} with a SEG to export")
    for folder in ("imagesTr", "labelsTr"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    seed = secrets.token_hex(16)  # one per export: dates shift alike within it, unlinkable across exports
    entries = []
    for n, case in enumerate(todo, start=1):
        entries.append(write_case(case, f"case-{n:04d}", out, seed))
        if progress is not None:
            progress(n, len(todo))
    datalist = {"description": NOTICE, "model": model, "numTraining": len(entries), "training": entries}
    (out / "datalist.json").write_text(json.dumps(datalist, indent=2))
    return len(entries)
