"""The rule tester: for each series of a study on the node, or of uploaded files, which models would run
and why, or why not. Routing's own functions decide; nothing here is a second opinion."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.inference.registry import IN_FORCE
from dicomnode.jobs.models import Instance, Series, Study
from dicomnode.jobs.routing import route
from dicomnode.settings import Rule
from dicomnode.store.part10 import read_to_pixels


@dataclass(frozen=True)
class SeriesVerdict:
    series_uid: str
    description: str
    modality: str
    models: tuple[str, ...]
    reasons: tuple[str, ...]


def judge(rules: Sequence[Rule], headers: Iterable[Dataset], states: Mapping[str, str]) -> list[SeriesVerdict]:
    """One verdict per series among ``headers`` (the first header of each series stands for it). A rule
    that matches but is not in force (``states``: rule name -> "in force" or why not, from
    :func:`~dicomnode.inference.registry.rule_states`) runs nothing, and says why, as routing does."""
    first: dict[str, Dataset] = {}
    for header in headers:
        first.setdefault(str(header.get("SeriesInstanceUID", "")), header)
    verdicts = []
    for series_uid, header in first.items():
        matched, reasons = route(rules, header)
        running = [r for r in matched if states.get(r.name, IN_FORCE) == IN_FORCE]
        why = [f"rule {r.name} matched: runs {r.model}" if r in running
               else f"rule {r.name} matched, but {states[r.name]}" for r in matched] + reasons
        verdicts.append(SeriesVerdict(series_uid=series_uid, description=str(header.get("SeriesDescription", "")),
                                      modality=str(header.get("Modality", "")),
                                      models=tuple(sorted({r.model for r in running})),
                                      reasons=tuple(why or ["no rule is in force"])))
    return verdicts


def study_headers(sessions: sessionmaker[Session], study_uid: str, inflated_limit: int) -> list[Dataset] | None:
    """One header per series of a study on the node (read from the spool as the sweep reads it, a deflated
    file inflated on disk up to ``inflated_limit`` bytes); None when there is no study."""
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            return None
        paths = [session.scalar(select(Instance.path).where(Instance.series_id == s.id).limit(1))
                 for s in session.scalars(select(Series).where(Series.study_id == study.id).order_by(Series.id))]
    return [read_to_pixels(Path(p), inflated_limit) for p in paths if p is not None]


def file_headers(paths: Iterable[Path], inflated_limit: int) -> tuple[list[Dataset], list[Path]]:
    """Headers of the DICOM files among ``paths`` (folders are walked), and the paths that are not DICOM
    or that could not be read within ``inflated_limit`` (a deflated file is inflated on disk, as the sweep
    reads it: never whole in memory)."""
    headers: list[Dataset] = []
    skipped: list[Path] = []
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if not file.is_file():
                continue
            try:
                headers.append(read_to_pixels(file, inflated_limit))
            except (InvalidDicomError, OSError, ValueError, EOFError, zlib.error):  # InflationLimit too
                skipped.append(file)
    return headers, skipped
