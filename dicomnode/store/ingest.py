"""The durable landing of one instance, whatever brought it (C-STORE or STOW-RS): checks, spool, database.

:func:`ingest` returns a DICOM status and never raises for the instance's own faults:

- ``0x0000`` success: the instance is durably in the spool *and* in the database
- ``0xA700`` refused, out of resources: the disk guard tripped (free space below ``min_free_disk_mb``),
  or the spool file could not be written
- ``0xA701`` refused, out of resources: the database could not record the instance
- ``0xC213`` cannot understand: a UID collision (the SOP Instance UID or the series already belongs to
  another study or series, or the study to another patient); never merged, a security alert. Also: the
  study is not the STOW-RS sender's (below)

:func:`ingest` lands a STOW-RS instance; C-STORE lands through the group commit
(:mod:`dicomnode.store.committer`) with the same checks, statuses and refusal helpers of this module.
:func:`ingest` audits nothing of the instance itself: its caller audits the receipts per request and the
refusals per burst (:mod:`dicomnode.dicomweb.stow`).

Ownership (STOW-RS). A study belongs to the sender that first stored it: its first ``StudySender`` row,
written in the transaction that made the study. The ``sender`` role may add to its own studies only.
Storing into any other existing study (another sender's, or one the PACS sent by C-STORE, which no sender
owns) is refused with ``0xC213``: the answer (so the same failure entry, Store Instances Response and HTTP
status) that a sender gets for a study UID that nobody has when the instance's Series or SOP Instance UID
is already taken by another study. The answer says no more than
"a UID of this instance is taken": not by whom, not for which patient, and not whether the Patient ID
matched (ownership is checked before the patient). Both refusals read the same rows with the same
statements before anything is written, write nothing (no spool file, no row), and are audited alike (a
security alert, per burst). That a study UID is taken cannot be hidden from a store that would otherwise
create it; what it holds can. Admins may store into any study (without becoming its owner). C-STORE
ignores ownership: the PACS sending into a study that a sender created is the hospital's normal flow, and
the study stays that sender's.
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
from dicomnode.files import free_bytes, fsync_dir
from dicomnode.jobs.models import Instance, Series, Study, StudySender
from dicomnode.log import extra
from dicomnode.settings import Settings
from dicomnode.store.index import InstanceMeta, find_collision, lookup, record_instance
from dicomnode.store.spool import adopt_file, clean_uid, spool_path

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
DOES_NOT_MATCH_SOP_CLASS = 0xA900  # PS3.4 B.2.3: pixel data its attributes do not describe (store/validity.py)
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4: the request's SOP class is not its presentation context's


@dataclass(frozen=True)
class Client:
    """Who sent an instance: ``actor`` names them in the audit trail (calling AE title, or STOW-RS user),
    ``calling_ae`` is what the study and instance rows keep (16 characters), ``sender`` the STOW-RS user,
    who owns the studies it makes and may store into and read only those (None for C-STORE), ``admin``
    when that user may store into any study (module docstring: ownership)."""

    actor: str
    address: str
    calling_ae: str
    sender: str | None = None
    transport: str = "C-STORE"
    admin: bool = False


NOT_OWNED = "the study is not the sender's (another sender's, or received by C-STORE)"


@dataclass(frozen=True)
class Landed:
    """What :func:`ingest` did with an instance: its DICOM ``status``; for a refusal, the ``reason`` (for
    the audit trail, never for the client) and whether the study was not the sender's (``not_owned``);
    for a success, whether anything ``changed`` (False: a re-send of the same content)."""

    status: int
    reason: str = ""
    not_owned: bool = False
    changed: bool = False


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


def study_owner(session: Session, study_uid: str) -> str | None:
    """The sender that owns the study: the first that stored it by STOW-RS (None: no sender, e.g. the PACS)."""
    return session.scalar(select(StudySender.user).join(Study, StudySender.study_id == Study.id)
                          .where(Study.study_uid == study_uid)
                          .order_by(StudySender.at, StudySender.user).limit(1))


def _may_add(client: Client, owner: str | None) -> bool:
    """Whether ``client`` may add to an existing study that ``owner`` owns (module docstring: ownership)."""
    return client.sender is None or client.admin or owner == client.sender


def check_before_write(sessions: sessionmaker[Session], meta: InstanceMeta, client: Client) -> Landed | None:
    """The refusal of ``meta`` for what the database holds (None: it may be written), read without a write
    lock: a study that is not ``client``'s first, then a UID collision. The same two statements run
    whether the study exists or not, and both refusals are 0xC213 (module docstring)."""
    with read_scope(sessions) as session:  # never waits on the group commit's write lock
        known = lookup(session, meta)
        owner = study_owner(session, meta.study_uid)
        if known.study is not None and not _may_add(client, owner):
            return Landed(UID_COLLISION, NOT_OWNED, not_owned=True)
        collision = find_collision(session, meta, known)
    return Landed(UID_COLLISION, collision) if collision else None


def _claim(session: Session, meta: InstanceMeta, client: Client) -> bool:
    """With the instance recorded in ``session``: whether ``client`` may keep it. The sender that made the
    study becomes its owner. Catches what raced in since :func:`check_before_write` (another sender's study
    made meanwhile: its owner row commits with it; the PACS's: it holds other instances)."""
    if client.sender is None:
        return True
    owner = study_owner(session, meta.study_uid)
    if owner is None:
        study_id = session.scalar(select(Study.id).where(Study.study_uid == meta.study_uid))
        others = session.scalar(select(Instance.id).join(Series, Instance.series_id == Series.id)
                                .where(Series.study_id == study_id, Instance.sop_instance_uid != meta.sop_instance_uid)
                                .limit(1))
        if others is None:  # made by this instance
            session.add(StudySender(study_id=study_id, user=client.sender))
            return True
    return _may_add(client, owner)


def ingest(settings: Settings, sessions: sessionmaker[Session], client: Client, meta: InstanceMeta,
           source: Path) -> Landed:
    """Land one decoded, validated instance: disk guard, ownership and collision check, spool move, rows.

    ``source`` is the instance's file (a Part-10 file) on the spool's file system, as it arrived: the
    way C-STORE lands its files, it goes into the spool byte for byte (fsynced, renamed, its folder
    fsynced) before the rows are committed; refused, it is left where it is, for the caller to remove.
    Returns the DICOM status (module docstring) and, for a refusal, its reason; the caller audits both
    (nothing is audited here but the start of a new study's transfer, with the study's row).
    """
    guard = disk_guard(settings)
    if guard:
        return Landed(OUT_OF_RESOURCES_DISK, guard)
    try:
        refused = check_before_write(sessions, meta, client)  # before the spool write, which could replace a file
    except SQLAlchemyError as exc:
        return Landed(OUT_OF_RESOURCES_DB, f"database error: {type(exc).__name__}")
    if refused is not None:
        return refused
    path = spool_path(settings.spool_dir, meta.study_uid, meta.series_uid, meta.sop_instance_uid)
    try:
        sha256, size = adopt_file(source, path)
        fsync_dir(path.parent)
    except StoreError as exc:
        return Landed(OUT_OF_RESOURCES_DISK, str(exc))
    except OSError as exc:
        return Landed(OUT_OF_RESOURCES_DISK, f"could not write spool file: {exc.strerror or exc}")
    not_owned = False
    try:
        with session_scope(sessions) as session:
            changed = record_instance(session, meta, path=str(path), sha256=sha256, size=size,
                                      calling_ae=client.calling_ae, calling_address=client.address,
                                      actor=client.actor)
            not_owned = not _claim(session, meta, client)
            if not_owned:  # rolls the instance back with the rest of the transaction
                raise UidCollision(NOT_OWNED)
    except UidCollision as exc:  # raced in since the check above
        drop_orphan(sessions, path)
        return Landed(UID_COLLISION, str(exc), not_owned=not_owned)
    except SQLAlchemyError as exc:
        return Landed(OUT_OF_RESOURCES_DB, f"database error: {type(exc).__name__}")
    return Landed(SUCCESS, changed=changed)
