"""A patient's prior studies for a model that declares ``[input.priors]``: found by Study Root C-FIND
(Patient ID and a date range, then each study's series), retrieved by C-GET or by C-MOVE to the node
(the query peer's ``retrieve``), bounded in time (``prior_timeout_seconds``) and size (``prior_max_mb``).

A prior lands through :class:`~dicomnode.store.landing.Landing`, as any received instance (spool, rows,
receipts), but its study UID is first written into ``prior_study``: the sweep keeps such a study (under
retention, like any study) and never routes it. A study the node already holds is not fetched again.

Every C-FIND is a DICOM Query audit row (the identifier as the peer saw it); a retrieval is a Begin
Transferring DICOM Instances row (with the query that found the series) and, once landed, the model's
read of it is the pipeline's DICOM Instances Accessed. Nothing here raises for the peer's answers: each
outcome is a :class:`PriorOutcome` whose ``reason`` says why a prior is not used.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.inference.manifest import Priors
from dicomnode.jobs.models import Instance, PriorStudy, Series, Study
from dicomnode.log import extra
from dicomnode.query.counts import audit_queries, pick_peer
from dicomnode.query.scu import FindResult, associated, encoded_query, find_all, identifier, make_ae, refusal
from dicomnode.settings import Peer, Settings
from dicomnode.store.ingest import SUCCESS, Client
from dicomnode.store.landing import Arrival, Landing

log = logging.getLogger(__name__)

GET = str(StudyRootQueryRetrieveInformationModelGet)
MOVE = str(StudyRootQueryRetrieveInformationModelMove)
OUT_OF_RESOURCES = 0xA702  # C-STORE sub-operation refused: the prior is larger than prior_max_mb


@dataclass
class PriorSeries:
    """One prior series as the peer described it."""

    study_uid: str
    series_uid: str
    study_date: str  # YYYYMMDD
    modality: str
    body_part: str
    description: str
    instances: int


@dataclass
class PriorOutcome:
    """What became of the search for one job: the priors fetched (with their local files) and, when none
    is usable, why; the figures of each retrieval."""

    peer: str = ""
    fetched: list[tuple[PriorSeries, list[str]]] = field(default_factory=list)
    reason: str = ""


def _date(value: object) -> dt.date | None:
    try:
        return dt.datetime.strptime(str(value or "").strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def study_identifier(patient_id: str, first: dt.date, last: dt.date) -> Dataset:
    return identifier("STUDY", PatientID=patient_id, StudyDate=f"{first:%Y%m%d}-{last:%Y%m%d}", StudyInstanceUID="",
                      ModalitiesInStudy="")


def series_identifier(study_uid: str) -> Dataset:
    return identifier("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="", Modality="", BodyPartExamined="",
                      SeriesDescription="", NumberOfSeriesRelatedInstances="")


def _matches(spec: Priors, answer: Dataset, current: Dataset) -> bool:
    if spec.same_modality and str(answer.get("Modality", "")) != str(current.get("Modality", "")):
        return False
    if spec.same_body_part and str(answer.get("BodyPartExamined", "")).upper() != \
            str(current.get("BodyPartExamined", "")).upper():
        return False
    return not spec.series_description or re.search(spec.series_description,
                                                    str(answer.get("SeriesDescription", ""))) is not None


def search(settings: Settings, sessions: sessionmaker[Session], peer: Peer, spec: Priors, current: Dataset
           ) -> tuple[list[PriorSeries], str]:
    """Up to ``spec.count`` prior series of the current series' patient, newest study first; or none and why."""
    patient_id, today = str(current.get("PatientID", "") or "").strip(), _date(current.get("StudyDate"))
    current_uid = str(current.get("StudyInstanceUID", ""))
    if not patient_id or today is None:
        return [], "the current study has no Patient ID or Study Date to look for priors with"
    first, last = today - dt.timedelta(days=spec.max_age_days), today - dt.timedelta(days=1)
    identifier = study_identifier(patient_id, first, last)
    (studies,) = find_all(settings, peer, [identifier])
    _audit(sessions, peer, [(identifier, studies)], current_uid, patient_id)
    if not studies.ok:
        return [], f"the search for priors failed: {studies.error}"
    dated = sorted(((d, str(a.StudyInstanceUID)) for a in studies.answers
                    if str(a.get("PatientID", "")) == patient_id and str(a.get("StudyInstanceUID", "")) != current_uid
                    and (d := _date(a.get("StudyDate"))) is not None and first <= d <= last), reverse=True)
    if not dated:
        return [], f"no prior study of the patient within {spec.max_age_days:g} days at {peer.ae_title}"
    identifiers = [series_identifier(uid) for _, uid in dated[:settings.query_max_answers]]
    results = find_all(settings, peer, identifiers)
    _audit(sessions, peer, list(zip(identifiers, results, strict=True)), current_uid, patient_id)
    found: list[PriorSeries] = []
    for (date, uid), result in zip(dated, results, strict=False):
        candidates = [PriorSeries(uid, str(a.SeriesInstanceUID), f"{date:%Y%m%d}", str(a.get("Modality", "")),
                                  str(a.get("BodyPartExamined", "")), str(a.get("SeriesDescription", "")),
                                  int(a.get("NumberOfSeriesRelatedInstances") or 0))
                      for a in result.answers if _matches(spec, a, current) and a.get("SeriesInstanceUID")]
        if candidates:
            found.append(max(candidates, key=lambda c: c.instances))
        if len(found) == spec.count:
            break
    failed = next((r.error for r in results if not r.ok), "")
    if not found:
        return [], (f"the search for prior series failed: {failed}" if failed else
                    f"no prior series of the patient matches the model's [input.priors] at {peer.ae_title}")
    return found, ""


def _audit(sessions: sessionmaker[Session], peer: Peer, queries: list[tuple[Dataset, FindResult]],
           study_uid: str, patient_id: str) -> None:
    with session_scope(sessions) as session:
        audit_queries(session, peer, queries, study_uid=study_uid, patient_id=patient_id, purpose="priors")


def local_files(sessions: sessionmaker[Session], series_uid: str) -> list[str]:
    """The files of a series the node holds, in the order they were recorded."""
    with sessions() as session:
        return [str(p) for p in session.scalars(select(Instance.path).join(Instance.series)
                                                .where(Series.series_uid == series_uid).order_by(Instance.id))]


def fetch(settings: Settings, sessions: sessionmaker[Session], peer: Peer, job_id: int, prior: PriorSeries,
          patient_id: str, bursts: BurstAuditor) -> tuple[list[str], str]:
    """The prior series' local files, retrieved now unless the node holds them; or none and why. Its
    ``prior_study`` row (written first, so that the sweep never routes it) records what happened."""
    held = local_files(sessions, prior.series_uid)
    with session_scope(sessions) as session:
        row = session.scalar(select(PriorStudy).where(PriorStudy.job_id == job_id,
                                                      PriorStudy.series_uid == prior.series_uid))
        if row is None:
            row = PriorStudy(job_id=job_id, study_uid=prior.study_uid, series_uid=prior.series_uid,
                             study_date=prior.study_date, peer=peer.ae_title, state="found", reason="",
                             instances=0, bytes=0, seconds=0.0)
            session.add(row)
        if not held:
            study = session.scalar(select(Study).where(Study.study_uid == prior.study_uid))
            record(session, AuditEvent.BEGIN_TRANSFER_IN, actor=peer.ae_title, study_uid=prior.study_uid,
                   patient_id=patient_id or None, address=peer.host, job_id=job_id, retrieve=peer.retrieve,
                   series_uid=prior.series_uid, query=encoded_query(retrieve_identifier(prior)),
                   known=study is not None, reason=f"prior for job {job_id} ({peer.retrieve.upper()})")
    if held and len(held) >= prior.instances:
        _note(sessions, job_id, prior, "fetched", "held by the node already", len(held), 0, 0.0)
        return held, ""
    started = time.monotonic()
    error = (_get(settings, sessions, peer, prior, bursts) if peer.retrieve == "get"
             else _move(settings, sessions, peer, prior))
    seconds = time.monotonic() - started
    files = local_files(sessions, prior.series_uid)
    size = _bytes(sessions, prior.series_uid)
    if not error and len(files) < prior.instances:
        error = f"{len(files)} of {prior.instances} instance(s) of the prior arrived"
    _note(sessions, job_id, prior, "failed" if error else "fetched", error, len(files), size, seconds)
    log.info("prior retrieved", extra=extra(stage="priors", job_id=job_id, peer=peer.ae_title, how=peer.retrieve,
                                            instances=len(files), bytes=size, seconds=f"{seconds:.2f}",
                                            error=error or "-"))
    return ([], error) if error else (files, "")


def _note(sessions: sessionmaker[Session], job_id: int, prior: PriorSeries, state: str, reason: str,
          instances: int, size: int, seconds: float) -> None:
    with session_scope(sessions) as session:
        row = session.scalar(select(PriorStudy).where(PriorStudy.job_id == job_id,
                                                      PriorStudy.series_uid == prior.series_uid))
        if row is not None:
            row.state, row.reason, row.instances, row.bytes, row.seconds = state, reason, instances, size, seconds


def mark(sessions: sessionmaker[Session], job_id: int, series_uid: str, state: str, reason: str = "") -> None:
    """Record that a fetched prior was used (or not, and why) by the job's result."""
    with session_scope(sessions) as session:
        row = session.scalar(select(PriorStudy).where(PriorStudy.job_id == job_id,
                                                      PriorStudy.series_uid == series_uid))
        if row is not None:
            row.state, row.reason = state, reason or row.reason


def _bytes(sessions: sessionmaker[Session], series_uid: str) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.coalesce(func.sum(Instance.size), 0)).join(Instance.series)
                                  .where(Series.series_uid == series_uid)) or 0)


def retrieve_identifier(prior: PriorSeries) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = prior.study_uid
    ds.SeriesInstanceUID = prior.series_uid
    return ds


_KEYS = itertools.count()


def _get(settings: Settings, sessions: sessionmaker[Session], peer: Peer, prior: PriorSeries,
         bursts: BurstAuditor) -> str:
    """C-GET of the prior series; each instance lands as a received one. Returns why it failed, or ""."""
    landing = Landing(settings, sessions, bursts)
    client = Client(actor=peer.ae_title, address=peer.host, calling_ae=peer.ae_title, transport="C-GET")
    key = ("c-get", next(_KEYS))
    limit = int(settings.prior_max_mb * 2**20)
    landed = {"bytes": 0, "refused": 0}
    incoming = settings.spool_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)

    def on_store(event: evt.Event) -> int:
        try:
            path = _arrived(event, incoming)
            size = path.stat().st_size
            if landed["bytes"] + size > limit:
                landed["refused"] += 1
                path.unlink(missing_ok=True)
                return OUT_OF_RESOURCES
            request = event.request
            command = (str(getattr(request, "AffectedSOPClassUID", "")),
                       str(getattr(request, "AffectedSOPInstanceUID", "")))
            result = landing.land(client, Arrival(key=key, path=path, command=command,
                                                  transfer_syntax=str(event.context.transfer_syntax)))
            path.unlink(missing_ok=True)  # adopted into the spool, or refused
            if result.status == SUCCESS:
                landed["bytes"] += size
            return result.status
        except Exception:  # a handler answers with a status, never raises
            log.exception("landing a retrieved prior failed", extra=extra(stage="priors"))
            return 0xC2FF

    ae = make_ae(settings, settings.query_timeout_seconds)
    ae.add_requested_context(GET, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    roles = []
    for context in StoragePresentationContexts:  # 120 storage classes and C-GET: within 128 contexts
        assert context.abstract_syntax is not None
        ae.add_requested_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    try:
        with associated(settings, ae, peer, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            if not assoc.is_established:
                return f"the prior could not be fetched: {refusal(assoc, peer)}"
            error = _drive(assoc, assoc.send_c_get(retrieve_identifier(prior), GET), settings, peer, "C-GET")
    finally:
        landing.close(key)
    if landed["refused"]:
        return f"the prior is larger than prior_max_mb ({settings.prior_max_mb:g} MB)"
    return error


def _arrived(event: evt.Event, incoming: Path) -> Path:
    """The sub-operation's instance as a Part-10 file: where the node's receiver set pynetdicom to write
    datasets as they arrive (``STORE_RECV_CHUNKED_DATASET``, :mod:`dicomnode.receive.incoming`), that
    file; else written now from the dataset in memory."""
    try:
        return Path(event.dataset_path)
    except AttributeError:
        pass
    with tempfile.NamedTemporaryFile(dir=incoming, suffix=".dcm", delete=False) as handle:
        handle.write(event.encoded_dataset(include_meta=True))
    return Path(handle.name)


def _move(settings: Settings, sessions: sessionmaker[Session], peer: Peer, prior: PriorSeries) -> str:
    """C-MOVE of the prior series to the node itself (it arrives through the receiver). Returns why it
    failed, or ""; cancelled past ``prior_max_mb``."""
    ae = make_ae(settings, settings.query_timeout_seconds)
    ae.add_requested_context(MOVE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    limit = int(settings.prior_max_mb * 2**20)
    with associated(settings, ae, peer) as assoc:
        if not assoc.is_established:
            return f"the prior could not be fetched: {refusal(assoc, peer)}"
        answers = assoc.send_c_move(retrieve_identifier(prior), settings.ae_title, MOVE)
        return _drive(assoc, answers, settings, peer, "C-MOVE",
                      too_large=lambda: _bytes(sessions, prior.series_uid) > limit)


def _drive(assoc: Association, answers: object, settings: Settings, peer: Peer, what: str,
           too_large: object = None) -> str:
    """Follow a C-GET or C-MOVE's answers to the end, the deadline or the size limit; why it failed, or ""."""
    deadline = time.monotonic() + settings.prior_timeout_seconds
    for status, _identifier in answers:  # type: ignore[attr-defined]
        if status is None or "Status" not in status:
            return f"the prior could not be fetched: {peer.ae_title} ended the {what} without an answer"
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if time.monotonic() > deadline:
                assoc.abort()
                return ("the prior could not be fetched within prior_timeout_seconds "
                        f"({settings.prior_timeout_seconds:g} s)")
            if callable(too_large) and too_large():
                assoc.abort()
                return f"the prior is larger than prior_max_mb ({settings.prior_max_mb:g} MB)"
            continue
        if code == 0x0000:
            return ""
        failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
        return (f"the prior could not be fetched: {peer.ae_title} answered the {what} with 0x{code:04X}"
                + (f" ({failed} sub-operation(s) failed)" if failed else ""))
    return f"the prior could not be fetched: {peer.ae_title} did not answer the {what}"


def find_and_fetch(settings: Settings, sessions: sessionmaker[Session], peers: Sequence[Peer], spec: Priors,
                   current: Dataset, calling_ae: str, job_id: int, bursts: BurstAuditor) -> PriorOutcome:
    """The priors a job compares with, fetched from the query peer that sent the study (else the first);
    never raises for the peer's answers."""
    peer = pick_peer(tuple(peers), calling_ae)
    if peer is None:
        return PriorOutcome(reason="no query peer (query = true) to look for priors at")
    outcome = PriorOutcome(peer=peer.ae_title)
    found, why = search(settings, sessions, peer, spec, current)
    if not found:
        outcome.reason = why
        return outcome
    reasons = []
    for prior in found:
        files, error = fetch(settings, sessions, peer, job_id, prior, str(current.PatientID), bursts)
        if files:
            outcome.fetched.append((prior, files))
        else:
            reasons.append(error)
    if not outcome.fetched:
        outcome.reason = reasons[0] if reasons else "no prior could be fetched"
    return outcome
