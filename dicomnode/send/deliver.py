"""The delivery ledger: each result to each destination once, every answer recorded as a Delivery row.

A destination gets the kinds of result it asks for (``Destination.send``), only those no Delivery row
records as stored there yet: a retry resends what is missing and nothing else. DIMSE destinations get
C-STORE (:mod:`dicomnode.send.scu`), ``dicomweb`` ones STOW-RS (:mod:`dicomnode.send.stow`). The caller
says where results go; this module never reads the configuration.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.errors import SendError
from dicomnode.jobs.models import Delivery, Study, StudySender
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.send.scu import StoreOutcome, send_files
from dicomnode.send.stow import stow_files
from dicomnode.settings import Destination, Settings


def result_kind(ds: Dataset) -> str:
    """What a destination's ``send`` names a result by: "SR" for reports; "SEG" for the image results,
    segmentations and explanation maps alike (SC overlays carry their source's modality)."""
    return "SR" if str(ds.get("Modality", "")) == "SR" else "SEG"


def deliver_results(settings: Settings, sessions: sessionmaker[Session], job: ClaimedJob,
                    destinations: list[Destination], paths: tuple[Path, ...], rule: str | None) -> None:
    """C-STORE each result not yet stored to each of ``destinations``, each taking the kinds of result it
    asks for; record each answer; raise unless all stored. With no destination, a study sent by DICOMweb
    is left for its sender to fetch by WADO-RS.

    Raises
    ------
    SendError
        ``retryable`` when a destination could not be reached or answered 0xA7xx (or not at all);
        permanent when every failing one rejected the association or answered another failure status,
        or when there is no destination (``rule`` names the job's routing rule in the message).
    """
    if not destinations and _sent_by_dicomweb(sessions, job):
        return  # a cloud node: the sender fetches the results by WADO-RS
    if not destinations:
        raise SendError(f"no destination for rule {rule} (set DICOMNODE_PACS, or check the rule's destinations)",
                        retryable=False)
    headers = {p: dcmread(p, stop_before_pixels=True) for p in paths}
    errors: list[SendError] = []
    for destination in destinations:
        wanted = tuple(p for p in paths if result_kind(headers[p]) in destination.send)
        try:
            _deliver_to(settings, sessions, job, destination, wanted,
                        {p: str(headers[p].SOPInstanceUID) for p in wanted})
        except SendError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:  # each destination's deliveries are recorded: a retry resends only what is missing
        raise SendError("; ".join(map(str, errors)), retryable=any(e.retryable for e in errors))


def _already_stored(sessions: sessionmaker[Session], job_id: int, destination: str) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(Delivery.sop_instance_uid).where(
            Delivery.job_id == job_id, Delivery.destination == destination, Delivery.outcome == "stored")))


def _classify(failed: list[StoreOutcome]) -> bool:
    """Retryable when every failure is 'out of resources' (0xA7xx) or no answer at all."""
    return all(o.status is None or 0xA700 <= o.status <= 0xA7FF for o in failed)


def _send(settings: Settings, destination: Destination, paths: tuple[Path, ...]) -> list[StoreOutcome]:
    """C-STORE to a DIMSE destination, STOW-RS to a ``dicomweb`` one: the same outcomes either way."""
    if destination.kind == "dicomweb":
        return stow_files(settings, destination, paths)
    return send_files(settings, destination.peer, paths)


def _sent_by_dicomweb(sessions: sessionmaker[Session], job: ClaimedJob) -> bool:
    with sessions() as session:
        return session.scalar(select(StudySender.user).join(Study, StudySender.study_id == Study.id)
                              .where(Study.study_uid == job.study_uid).limit(1)) is not None


def _deliver_to(settings: Settings, sessions: sessionmaker[Session], job: ClaimedJob, destination: Destination,
                paths: tuple[Path, ...], uids: dict[Path, str]) -> None:
    target = str(destination)  # AE@host:port, or the DICOMweb URL
    actor = destination.ae_title or destination.name
    address = urlsplit(destination.url).hostname or "" if destination.kind == "dicomweb" else destination.host
    done = _already_stored(sessions, job.id, target)
    pending = tuple(p for p in paths if uids[p] not in done)
    if not pending:
        return
    with session_scope(sessions) as session:
        record(session, AuditEvent.BEGIN_TRANSFER_OUT, actor=settings.ae_title, **job.subject(), job_id=job.id,
               destination=target, instances=len(pending))
    try:
        outcomes = _send(settings, destination, pending)
    except SendError as exc:
        with session_scope(sessions) as session:
            record(session, AuditEvent.RESULT_SEND_FAILED, Outcome.SERIOUS_FAILURE, actor=actor,
                   **job.subject(), job_id=job.id, address=address, reason=str(exc))
        raise
    _record(sessions, job, target, actor, address, outcomes)
    failed = [o for o in outcomes if not o.stored]
    if failed:
        codes = ", ".join("no answer" if o.status is None else f"0x{o.status:04X}" for o in failed)
        raise SendError(f"{len(failed)} of {len(outcomes)} result(s) not stored by {target}: {codes}",
                        retryable=_classify(failed))


def _record(sessions: sessionmaker[Session], job: ClaimedJob, target: str, actor: str, address: str,
            outcomes: list[StoreOutcome]) -> None:
    """One Delivery row and one audit row per answer, in one transaction."""
    with session_scope(sessions) as session:
        for outcome in outcomes:
            status = f"0x{outcome.status:04X}" if outcome.status is not None else "none"
            session.add(Delivery(job_id=job.id, destination=target, sop_class_uid=outcome.sop_class_uid,
                                 sop_instance_uid=outcome.sop_instance_uid, path=str(outcome.path),
                                 status=outcome.status, outcome="stored" if outcome.stored else "failed"))
            record(session, AuditEvent.RESULT_SENT if outcome.stored else AuditEvent.RESULT_SEND_FAILED,
                   Outcome.SUCCESS if outcome.stored else Outcome.SERIOUS_FAILURE, actor=actor,
                   **job.subject(), job_id=job.id, address=address,
                   sop_instance_uid=outcome.sop_instance_uid, sop_classes={outcome.sop_class_uid: 1}, status=status)
