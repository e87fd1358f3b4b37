"""The durable landing of one instance, whatever brought it (C-STORE or STOW-RS): checks, spool, database.

:func:`ingest` returns a DICOM status and never raises for the instance's own faults:

- ``0x0000`` success: the instance is durably in the spool *and* in the database
- ``0xA700`` refused, out of resources: the disk guard tripped (free space below ``min_free_disk_mb``),
  or the spool file could not be written
- ``0xA701`` refused, out of resources: the database could not record the instance
- ``0xC213`` cannot understand: a UID collision (the SOP Instance UID or the series already belongs to
  another study or series, or the study to another patient); never merged, audited as a security alert

Both transports call it with the same checks in the same order, so that dedupe, the collision check,
completeness, routing and the audit trail cannot differ between them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import read_scope, session_scope
from dicomnode.errors import StoreError, UidCollision
from dicomnode.files import free_bytes, write_atomic
from dicomnode.jobs.models import Instance, Study, StudySender
from dicomnode.log import extra
from dicomnode.settings import Settings
from dicomnode.store.index import InstanceMeta, find_collision, record_instance
from dicomnode.store.spool import clean_uid, spool_path

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES_DISK = 0xA700
OUT_OF_RESOURCES_DB = 0xA701
TOO_LARGE = 0xA700
CANNOT_DECODE = 0xC210
BAD_UID = 0xC211
UID_MISMATCH = 0xC212
UID_COLLISION = 0xC213
UNEXPECTED = 0xC2FF
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4: the request's SOP class is not its presentation context's


@dataclass(frozen=True)
class Client:
    """Who sent an instance: ``actor`` names them in the audit trail (calling AE title, or STOW-RS user),
    ``calling_ae`` is what the study and instance rows keep (16 characters), ``sender`` the STOW-RS user
    who may read the study's results (None for C-STORE)."""

    actor: str
    address: str
    calling_ae: str
    sender: str | None = None
    transport: str = "C-STORE"


def audit(sessions: sessionmaker[Session], event: AuditEvent, outcome: Outcome, **fields: Any) -> None:
    """One audit row in its own transaction; a database failure is logged, never raised."""
    try:
        with session_scope(sessions) as session:
            record(session, event, outcome, **fields)
    except SQLAlchemyError:
        log.exception("could not write audit row", extra=extra(event=event.value))


def refuse(sessions: sessionmaker[Session], client: Client, status: int, reason: str,
           study_uid: str | None = None, log_reason: str | None = None) -> int:
    """Audit the refusal with its full reason; the log gets ``log_reason``, which quotes no values."""
    log.warning("%s refused with 0x%04X: %s", client.transport, status, log_reason or reason,
                extra=extra(stage="receive"))
    audit(sessions, AuditEvent.INSTANCE_REFUSED, Outcome.MINOR_FAILURE, actor=client.actor, study_uid=study_uid,
          address=client.address, status=f"0x{status:04X}", reason=reason, transport=client.transport)
    return status


def refuse_collision(sessions: sessionmaker[Session], client: Client, meta: InstanceMeta, reason: str) -> int:
    """0xC213 and a security-alert audit row naming the colliding UIDs (the log names only the kind)."""
    log.warning("%s refused with 0x%04X: %s", client.transport, UID_COLLISION, reason, extra=extra(stage="receive"))
    audit(sessions, AuditEvent.INSTANCE_REFUSED, Outcome.SERIOUS_FAILURE, actor=client.actor,
          study_uid=meta.study_uid, patient_id=meta.patient_id, patient_name=meta.patient_name,
          address=client.address, status=f"0x{UID_COLLISION:04X}", reason=reason, security_alert=True,
          series_uid=meta.series_uid, sop_instance_uid=meta.sop_instance_uid, transport=client.transport)
    return UID_COLLISION


def disk_guard(settings: Settings) -> str:
    """Why the node must refuse instances for lack of disk space, or "" when it need not."""
    try:
        free = free_bytes(settings.spool_dir)
    except OSError as exc:
        return f"disk guard: free space unknown ({exc.strerror or exc})"
    threshold = int(settings.min_free_disk_mb * 1024 * 1024)
    if free < threshold:
        return f"disk guard: {free // 2**20} MiB free, below min_free_disk_mb={settings.min_free_disk_mb:g}"
    return ""


# every attribute read_meta reads: the early header parse keeps these, and only these (receive/dataphase/early.py)
META_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "SeriesNumber",
                 "Modality", "SeriesDescription", "PatientID", "PatientName")


class Attributes(Protocol):
    """What :func:`read_meta` reads from: a pydicom Dataset, or the early header's values."""

    def get(self, key: str, default: Any = None) -> Any: ...


def read_meta(ds: Attributes, transfer_syntax_uid: str) -> InstanceMeta:
    """Read and validate what the node keeps; raises ValueError naming the bad attribute."""
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        try:
            uids[keyword] = clean_uid(ds.get(keyword))
        except ValueError as exc:
            raise ValueError(f"{keyword}: {exc}") from None
    series_number = ds.get("SeriesNumber")
    try:
        number = int(series_number) if series_number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return InstanceMeta(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        modality=str(ds.get("Modality", "") or "").strip("\x00 ")[:16],
        series_number=number,
        series_description=str(ds.get("SeriesDescription", "") or "").strip("\x00 "),
        patient_id=str(ds.get("PatientID", "") or "").strip("\x00 ")[:64],
        patient_name=str(ds.get("PatientName", "") or "").strip("\x00 ")[:324],
    )


def drop_orphan(sessions: sessionmaker[Session], path: Path) -> None:
    """Remove a refused instance's spool file unless a recorded instance owns that path."""
    try:
        with sessions() as session:
            owned = session.scalar(select(Instance.id).where(Instance.path == str(path))) is not None
        if not owned:
            path.unlink(missing_ok=True)
    except (SQLAlchemyError, OSError):
        log.exception("could not remove a refused instance's spool file", extra=extra(stage="receive"))


def collision_before_write(sessions: sessionmaker[Session], meta: InstanceMeta) -> str:
    """Why ``meta`` collides with what the database holds ("" when it does not), read without a write lock."""
    with read_scope(sessions) as session:  # never waits on the group commit's write lock
        return find_collision(session, meta)


def _own(session: Session, study_uid: str, sender: str) -> None:
    """Record that ``sender`` sent (part of) the study: it may then read the study's results."""
    study_id = session.scalar(select(Study.id).where(Study.study_uid == study_uid))
    if study_id is not None and session.get(StudySender, (study_id, sender)) is None:
        session.add(StudySender(study_id=study_id, user=sender))


def ingest(settings: Settings, sessions: sessionmaker[Session], client: Client, meta: InstanceMeta,
           data: bytes) -> int:
    """Land one decoded, validated instance: disk guard, collision check, spool write, database row.

    ``data`` is what goes into the spool byte for byte (a Part-10 file). Returns a DICOM status
    (module docstring); a refusal is audited with ``client`` as the actor.
    """
    guard = disk_guard(settings)
    if guard:
        return refuse(sessions, client, OUT_OF_RESOURCES_DISK, guard, meta.study_uid)
    try:
        collision = collision_before_write(sessions, meta)  # before the spool write, which could replace another's file
    except SQLAlchemyError as exc:
        return refuse(sessions, client, OUT_OF_RESOURCES_DB, f"database error: {type(exc).__name__}", meta.study_uid)
    if collision:
        return refuse_collision(sessions, client, meta, collision)
    path = spool_path(settings.spool_dir, meta.study_uid, meta.series_uid, meta.sop_instance_uid)
    try:
        sha256 = write_atomic(path, data)
    except StoreError as exc:
        return refuse(sessions, client, OUT_OF_RESOURCES_DISK, str(exc), meta.study_uid)
    try:
        with session_scope(sessions) as session:
            changed = record_instance(session, meta, path=str(path), sha256=sha256, size=len(data),
                                      calling_ae=client.calling_ae, calling_address=client.address,
                                      actor=client.actor)
            study = session.scalar(select(Study).where(Study.study_uid == meta.study_uid))
            assert study is not None  # record_instance made it or found it
            # one receipt row per instance: C-STORE audits its receipts per association instead (tally)
            record(session, AuditEvent.INSTANCE_RECEIVED, actor=client.actor, **study.subject(),
                   sop_instance_uid=meta.sop_instance_uid, sop_class_uid=meta.sop_class_uid, size=len(data),
                   unchanged=not changed, transport=client.transport)
            if client.sender is not None:
                _own(session, meta.study_uid, client.sender)
    except UidCollision as exc:  # raced in since the check above
        drop_orphan(sessions, path)
        return refuse_collision(sessions, client, meta, str(exc))
    except SQLAlchemyError as exc:
        return refuse(sessions, client, OUT_OF_RESOURCES_DB, f"database error: {type(exc).__name__}", meta.study_uid)
    return SUCCESS
