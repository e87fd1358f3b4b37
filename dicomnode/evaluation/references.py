"""Judge incoming SEGs: is this a reader's reference for one of the node's results? If so, score it.

Runs in the completeness sweep's thread, after routing: an incoming SEG (SOP class Segmentation Storage)
in a study that is no longer receiving is judged once, and the judgement is a ``reference_object`` row:

- the node's own output coming back (a SOP Instance UID the node delivered, or its result's series) is
  ignored;
- an object no rule of ``settings.reference`` matches (series description, manufacturer, sending AE) is
  ignored;
- a reference whose source series (Referenced Series Sequence, PS3.3 C.7.6.16) has no job of a
  segmentation model is ignored; one whose job has not finished yet is judged on a later sweep;
- otherwise Dice and volumes per segment are recorded against the node's SEG of the latest succeeded job.

An incoming SR (a reader's report) is judged the same way against the node's classification of the series
it references (Current Requested Procedure Evidence Sequence): the reader calls a class present when its
finding code appears as the value of a CODE content item anywhere in the report; ``agrees`` records
whether every class the model outputs was called as the model called it (probability >= threshold).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope
from dicomnode.evaluation.compare import compare
from dicomnode.inference.manifest import Manifest
from dicomnode.jobs.models import Delivery, Instance, Job, ReferenceObject, ReferenceSegment, Series, Study
from dicomnode.jobs.routing import search
from dicomnode.jobs.status import JobStatus, StudyState
from dicomnode.log import extra
from dicomnode.results.files import node_seg_path, written_outputs
from dicomnode.settings import ReferenceRules, Settings

log = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SR_STORAGE = ("1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
              "1.2.840.10008.5.1.4.1.1.88.34")
UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class Candidate:
    """An incoming SEG not judged yet."""

    path: str
    sop_instance_uid: str
    calling_ae: str
    series_description: str
    sop_class_uid: str = SEGMENTATION_STORAGE


def candidates(session: Session, limit: int = 50) -> list[Candidate]:
    """Incoming SEGs of studies that are no longer receiving, and that have no judgement yet."""
    judged = exists().where(ReferenceObject.sop_instance_uid == Instance.sop_instance_uid)
    rows = session.execute(
        select(Instance.path, Instance.sop_instance_uid, Instance.calling_ae, Series.description,
               Instance.sop_class_uid)
        .join(Instance.series).join(Series.study)
        .where(Instance.sop_class_uid.in_((SEGMENTATION_STORAGE, *SR_STORAGE)), Study.state != StudyState.RECEIVING,
               ~judged)
        .order_by(Instance.id).limit(limit)).all()
    return [Candidate(str(p), str(u), str(a), str(d or ""), str(c)) for p, u, a, d, c in rows]


def rule_matches(rules: ReferenceRules, description: str, manufacturer: str, calling_ae: str) -> str:
    """Which reference rule the object matches ("" when none does)."""
    if rules.series_description and search(rules.series_description, description):
        return "series_description"
    if rules.manufacturer and search(rules.manufacturer, manufacturer):
        return "manufacturer"
    if calling_ae in rules.calling_aes:
        return "calling_aes"
    return ""


def source_series_uid(ds: Dataset) -> str:
    """The series the SEG was drawn on (the first item of its Referenced Series Sequence)."""
    for item in ds.get("ReferencedSeriesSequence", []):
        return str(item.get("SeriesInstanceUID", ""))
    return ""


def _own(session: Session, ds: Dataset) -> bool:
    uid = str(ds.get("SOPInstanceUID", ""))
    return session.scalar(select(Delivery.id).where(Delivery.sop_instance_uid == uid).limit(1)) is not None


def _jobs(session: Session, series_uids: list[str], models: set[str]) -> list[Job]:
    return list(session.scalars(select(Job).join(Job.series).where(
        Series.series_uid.in_(series_uids), Job.model_id.in_(models)).order_by(Job.id.desc())))


def evidence_series(ds: Dataset) -> list[str]:
    """The series an SR's evidence names (Current Requested Procedure Evidence Sequence, PS3.3 C.17.2)."""
    evidence = ds.get("CurrentRequestedProcedureEvidenceSequence", [])
    return [str(series.get("SeriesInstanceUID", "")) for study in evidence
            for series in study.get("ReferencedSeriesSequence", [])]


def coded_values(items: Iterable[Dataset]) -> set[tuple[str, str]]:
    """(scheme, value) of every CODE content item's value, at any depth of the content tree."""
    found: set[tuple[str, str]] = set()
    for item in items:
        for code in item.get("ConceptCodeSequence", []):
            found.add((str(code.CodingSchemeDesignator), str(code.CodeValue)))
        found |= coded_values(item.get("ContentSequence", []))
    return found


def _job_state(jobs: list[Job]) -> tuple[list[Job], bool]:
    """The succeeded jobs, and whether to wait (none succeeded yet, one still queued or running)."""
    done = [j for j in jobs if j.status is JobStatus.SUCCEEDED]
    return done, not done and any(j.status in UNFINISHED for j in jobs)


def judge_report(settings: Settings, session: Session, manifests: dict[str, Manifest], ds: Dataset,
                 row: ReferenceObject) -> ReferenceObject | None:
    """A reader's SR against the node's classification (module docstring); None: judge it again later."""
    classifiers = {m.id: m for m in manifests.values() if m.task == "classification"}
    done, wait = _job_state(_jobs(session, evidence_series(ds), set(classifiers)))
    if wait:
        return None
    if not done:
        row.reason = "no classification of the node on its evidence series"
        return row
    job = done[0]
    outputs = written_outputs(settings.results_dir, job.id)
    if outputs is None:
        row.reason = "the node's classification result is not on disk"
        return row
    called = coded_values(ds.get("ContentSequence", []))
    specs = classifiers[job.model_id].output.classes
    row.agrees = all((float(outputs.get(c.label, 0.0)) >= c.threshold)
                     == ((c.finding.scheme, c.finding.value) in called) for c in specs)
    row.outcome = "evaluated"
    row.job_id, row.model_id, row.model_version = job.id, job.model_id, job.model_version
    return row


def judge(settings: Settings, session: Session, manifests: dict[str, Manifest], item: Candidate
          ) -> ReferenceObject | None:
    """The judgement of one incoming SEG (module docstring); None: judge it again later."""
    ds = dcmread(item.path, force=True)
    report = item.sop_class_uid in SR_STORAGE
    series = (evidence_series(ds) or [""])[0] if report else source_series_uid(ds)
    row = ReferenceObject(sop_instance_uid=item.sop_instance_uid, source_series_uid=series[:64],
                          calling_ae=item.calling_ae, outcome="ignored")
    if _own(session, ds):
        row.reason = "the node's own result"
        return row
    matched = rule_matches(settings.reference, item.series_description, str(ds.get("Manufacturer", "") or ""),
                           item.calling_ae)
    if not matched:
        row.reason = "no reference rule matched"
        return row
    if report:
        reported = judge_report(settings, session, manifests, ds, row)
        if reported is not None and reported.outcome == "evaluated":
            reported.reason = f"reference by {matched}"
        return reported
    done, wait = _job_state(_jobs(session, [series], {m.id for m in manifests.values() if m.task == "segmentation"}))
    if wait:
        return None
    found = next(((j, p) for j in done if (p := node_seg_path(settings.results_dir, j.id)) is not None), None)
    if found is None:
        row.reason = "no SEG of the node on its source series"
        return row
    job, path = found
    node_seg = dcmread(path)
    if str(node_seg.SeriesInstanceUID) == str(ds.SeriesInstanceUID):
        row.reason = "the node's own result"
        return row
    row.outcome, row.reason = "evaluated", f"reference by {matched}"
    row.job_id, row.model_id, row.model_version = job.id, job.model_id, job.model_version
    row.segments = [ReferenceSegment(segment_number=s.segment_number, label=s.label, dice=s.dice,
                                     node_ml=s.node_ml, reference_ml=s.reference_ml)
                    for s in compare(node_seg, ds)]
    return row


def evaluate_pending(settings: Settings, sessions: sessionmaker[Session], manifests: dict[str, Manifest]) -> int:
    """Judge every incoming SEG not judged yet; returns how many references were evaluated now.

    An object that cannot be read or compared is recorded as ignored with the exception's type (never
    its text, which could quote header values).
    """
    with sessions() as session:
        work = candidates(session)
    evaluated = 0
    for item in work:
        with session_scope(sessions) as session:
            try:
                row = judge(settings, session, manifests, item)
            except Exception as exc:
                row = ReferenceObject(sop_instance_uid=item.sop_instance_uid, calling_ae=item.calling_ae,
                                      outcome="ignored", reason=f"could not be compared ({type(exc).__name__})")
            if row is None:
                continue
            session.add(row)
            evaluated += row.outcome == "evaluated"
        log.info("reference judged", extra=extra(stage="evaluate", outcome=row.outcome, model=row.model_id or "",
                                                 reason=row.reason))
    return evaluated
