"""The result objects of a study, as QIDO-RS and WADO-RS serve them: headers read from the result files.

Results are the files the pipeline wrote completely (listed by their summary, :mod:`dicomnode.results.files`), and
any failure notice: a client that uploaded a study finds its SEG and SR, or the notice that says why
there is none, without DIMSE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.jobs.models import Job, Series, Study
from dicomnode.results.files import notice_paths, written_results
from dicomnode.settings import Settings


@dataclass(frozen=True)
class ResultFile:
    path: Path
    header: Dataset  # without pixel data

    @property
    def series_uid(self) -> str:
        return str(self.header.SeriesInstanceUID)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.SOPInstanceUID)


def _job_ids(sessions: sessionmaker[Session], study_uid: str) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(Job.id).join(Series, Job.series_id == Series.id)
                                    .join(Study, Series.study_id == Study.id)
                                    .where(Study.study_uid == study_uid).order_by(Job.id)))


def _paths(settings: Settings, job_id: int) -> list[Path]:
    written = written_results(settings.results_dir, job_id)
    paths = list(written.paths) if written is not None else []
    return paths + notice_paths(settings.results_dir, job_id)


def result_files(settings: Settings, sessions: sessionmaker[Session], study_uid: str) -> list[ResultFile]:
    """Every complete result file of the study, with its header; unreadable files are left out."""
    found = []
    for job_id in _job_ids(sessions, study_uid):
        for path in _paths(settings, job_id):
            try:
                header = dcmread(path, stop_before_pixels=True)
            except (OSError, ValueError, InvalidDicomError):  # damaged since it was written: left out, not a 500
                continue
            if str(header.get("StudyInstanceUID", "")) == study_uid:
                found.append(ResultFile(path, header))
    return found


def series_attributes(files: list[ResultFile], base_url: str) -> list[Dataset]:
    """One QIDO-RS series result (PS3.18 10.6.3.3.2) per result series."""
    by_series: dict[str, list[ResultFile]] = {}
    for each in files:
        by_series.setdefault(each.series_uid, []).append(each)
    answers = []
    for series_uid, members in by_series.items():
        header = members[0].header
        ds = Dataset()
        ds.StudyInstanceUID = header.StudyInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.Modality = header.Modality
        ds.SeriesNumber = header.get("SeriesNumber")
        ds.SeriesDescription = header.get("SeriesDescription", "")
        ds.NumberOfSeriesRelatedInstances = len(members)
        ds.RetrieveURL = f"{base_url}/studies/{header.StudyInstanceUID}/series/{series_uid}"
        answers.append(ds)
    return answers


def instance_attributes(files: list[ResultFile], base_url: str) -> list[Dataset]:
    """One QIDO-RS instance result (PS3.18 10.6.3.3.3) per result file."""
    answers = []
    for each in files:
        header = each.header
        ds = Dataset()
        ds.StudyInstanceUID = header.StudyInstanceUID
        ds.SeriesInstanceUID = header.SeriesInstanceUID
        ds.SOPClassUID = header.SOPClassUID
        ds.SOPInstanceUID = header.SOPInstanceUID
        ds.Modality = header.Modality
        ds.InstanceNumber = header.get("InstanceNumber")
        ds.RetrieveURL = (f"{base_url}/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}"
                          f"/instances/{header.SOPInstanceUID}")
        answers.append(ds)
    return answers
