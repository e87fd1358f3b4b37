"""The results folder of a job, ``<results_dir>/job-<id>/``: the only module that knows its layout.

A job's result objects are written there as ``<modality>-<SOP Instance UID>.dcm``, then ``results.json``
(their names, the model's outputs, the inference seconds, a summary), last: when it exists, every result
file is complete. A failure notice is written beside them as ``notice-<SOP Instance UID>.dcm``. Delivery,
monitoring, the reference evaluation, the training export and DICOMweb read the folder through the
functions here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.files import fsync_dirs, write_atomic

RESULTS_SUMMARY = "results.json"


@dataclass(frozen=True)
class JobResult:
    """The written result files, the model's outputs (segment ml or class probability by name), a summary."""

    paths: tuple[Path, ...]
    outputs: dict[str, float]
    inference_seconds: float
    summary: str


def job_folder(results_dir: Path, job_id: int) -> Path:
    """The folder of job ``job_id``'s results."""
    return results_dir / f"job-{job_id}"


def result_file_name(ds: Dataset) -> str:
    """The file name of a result object: ``<modality>-<SOP Instance UID>.dcm``."""
    return f"{ds.Modality.lower()}-{ds.SOPInstanceUID}.dcm"


def notice_path(results_dir: Path, job_id: int, notice: Dataset) -> Path:
    """Where job ``job_id``'s failure notice ``notice`` is written."""
    return job_folder(results_dir, job_id) / f"notice-{notice.SOPInstanceUID}.dcm"


def notice_paths(results_dir: Path, job_id: int) -> list[Path]:
    """The failure notices written for job ``job_id``, sorted by name."""
    return sorted(job_folder(results_dir, job_id).glob("notice-*.dcm"))


def write_dataset(path: Path, ds: Dataset, *, sync_dir: bool = True) -> None:
    """A Part-10 file of ``ds``, written atomically (owner-only: results carry PHI); with ``sync_dir``
    False the caller makes the name durable (:func:`~dicomnode.files.fsync_dirs`)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    write_atomic(path, buffer.getvalue(), sync_dir=sync_dir)


def write_results(results_dir: Path, job_id: int, objects: list[Dataset], outputs: dict[str, float],
                  inference_seconds: float, summary: str) -> JobResult:
    """The result files, written atomically under ``results/job-<id>/``, then ``results.json``.

    ``results.json`` is written last: when it exists, every result file is complete, and a retried job
    goes straight to delivery instead of running the model again. The result files' names are made
    durable by one fsync of the folder, before ``results.json`` is written.
    """
    folder = job_folder(results_dir, job_id)
    paths = []
    for ds in objects:
        path = folder / result_file_name(ds)
        write_dataset(path, ds, sync_dir=False)
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
    folder = job_folder(results_dir, job_id)
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


def result_series_uids(results_dir: Path, job_id: int) -> set[str]:
    """The series UIDs of every object job ``job_id`` has written (results and failure notices): each is
    written before it is sent, so a series the PACS holds from this job is named here. A file that cannot
    be read (purged meanwhile) names nothing."""
    found = set()
    for path in job_folder(results_dir, job_id).glob("*.dcm"):  # written atomically: no partial .dcm
        try:
            found.add(str(dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                          .SeriesInstanceUID))
        except Exception:
            continue
    return found


def written_outputs(results_dir: Path, job_id: int) -> dict[str, float] | None:
    """The outputs ``results.json`` records for job ``job_id``, as written; None when it cannot be read."""
    try:
        outputs: dict[str, float] = json.loads((job_folder(results_dir, job_id) / RESULTS_SUMMARY)
                                               .read_text())["outputs"]
    except (OSError, ValueError, KeyError):
        return None
    return outputs


EVIDENCE = "AI_EVIDENCE"  # the Content Label of a classifier's evidence SEG


def node_seg_path(results_dir: Path, job_id: int) -> Path | None:
    """The node's segmentation SEG among a job's written results: a BINARY SEG that is not a classifier's
    evidence region (Content Label ``AI_EVIDENCE``, :func:`dicomnode.results.seg.build_explanation_seg`)."""
    for path in sorted(job_folder(results_dir, job_id).glob("seg-*.dcm")):
        header = dcmread(path, stop_before_pixels=True)
        if str(header.get("SegmentationType", "")) == "BINARY" and str(header.get("ContentLabel", "")) != EVIDENCE:
            return path
    return None
