"""DIMSE and association event handlers: plain functions that return status codes and never raise.

Dependencies come in through a bound :class:`ReceiveContext`, never through globals.
Status codes (PS3.4 B.2.3 and PS3.7 C):

- ``0x0000`` success: the instance is durably in the spool *and* in the database
- ``0xA700`` refused, out of resources: free disk space is below ``min_free_disk_mb`` (the disk
  guard), or the spool file could not be written (disk full, I/O error)
- ``0xA700`` also: the instance is larger than ``max_instance_mb``, or a deflated one inflates beyond
  ``max_inflated_mb`` (an instance growing past ``max_instance_mb`` while it arrives is cut off with an
  A-ABORT: see :mod:`dicomnode.receive.limits`)
- ``0xA701`` refused, out of resources: the database could not record the instance
- ``0xC210`` cannot understand: the dataset could not be decoded
- ``0xC211`` cannot understand: a required UID is missing or invalid
- ``0xC212`` cannot understand: SOP Class/Instance UID in the dataset differ from the command's
- ``0xC213`` cannot understand: a UID collision; the SOP Instance UID or the series already belongs to
  another study or series, or the study to another patient. Never merged; audited as a security alert
- ``0xC2FF`` cannot understand: an unexpected error (logged with a traceback, no PHI)
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom.dsutils import encode_file_meta
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.config_store import runtime_peers
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import read_scope, session_scope
from dicomnode.errors import StoreError
from dicomnode.jobs.models import Instance
from dicomnode.log import extra
from dicomnode.receive.accept import decide
from dicomnode.receive.limits import InflationLimit, inflate_bounded
from dicomnode.receive.tally import Tally
from dicomnode.settings import Settings
from dicomnode.store.committer import GroupCommitter, Receipt
from dicomnode.store.index import InstanceMeta, find_collision
from dicomnode.store.spool import clean_uid, free_bytes, remove_new_file, spool_path, write_atomic

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


@dataclass(frozen=True)
class ReceiveContext:
    settings: Settings
    sessions: sessionmaker[Session]
    committer: GroupCommitter = field(init=False)
    tally: Tally = field(init=False, default_factory=Tally)

    def __post_init__(self) -> None:
        object.__setattr__(self, "committer", GroupCommitter(self.sessions))


def _audit(ctx: ReceiveContext, event: AuditEvent, outcome: Outcome, **fields: Any) -> None:
    try:
        with session_scope(ctx.sessions) as session:
            record(session, event, outcome, **fields)
    except SQLAlchemyError:
        log.exception("could not write audit row", extra=extra(event=event.value))


def _requestor(event: Any) -> tuple[str, str]:
    """Calling AE title and address; at EVT_REQUESTED the title is only in the A-ASSOCIATE primitive."""
    req = event.assoc.requestor
    title = req.ae_title or (req.primitive.calling_ae_title if req.primitive is not None else "")
    return str(title).strip(), str(req.address)


def handle_requested(event: Any, ctx: ReceiveContext) -> None:
    """EVT_REQUESTED: reject unknown callers with A-ASSOCIATE-RJ and a security-alert audit row."""
    try:
        calling_ae, address = _requestor(event)
        primitive = event.assoc.requestor.primitive
        called_ae = primitive.called_ae_title if primitive is not None else ""
        decision = decide(own_ae=ctx.settings.ae_title, called_ae=str(called_ae), calling_ae=calling_ae,
                          address=address, peers=runtime_peers(ctx.settings, ctx.sessions),
                          require_known=ctx.settings.require_known_callers)
        if decision.accepted:
            return
        log.warning("association rejected: %s", decision.reason, extra=extra(stage="receive"))
        _audit(ctx, AuditEvent.ASSOCIATION_REJECTED, Outcome.MINOR_FAILURE, actor=calling_ae,
               address=address, reason=decision.reason, security_alert=True)
        event.assoc.acse.send_reject(0x01, 0x01, decision.diagnostic)
        event.assoc.kill()  # as pynetdicom's own rejections do: lets the DUL send the A-ASSOCIATE-RJ first
    except Exception:
        log.exception("association check failed; rejecting", extra=extra(stage="receive"))
        try:
            event.assoc.acse.send_reject(0x02, 0x01, 0x01)
        except Exception:
            event.assoc.abort()


def handle_rejected(event: Any, ctx: ReceiveContext) -> None:
    """EVT_REJECTED: pynetdicom's own rejections (too many associations: local limit exceeded)."""
    calling_ae, address = _requestor(event)
    log.warning("association rejected by the association limit", extra=extra(stage="receive"))
    _audit(ctx, AuditEvent.ASSOCIATION_REJECTED, Outcome.MINOR_FAILURE, actor=calling_ae, address=address,
           reason=f"local limit exceeded (max_associations={ctx.settings.max_associations})")


def handle_tls_failure(address: str, reason: str, ctx: ReceiveContext) -> None:
    """A TLS handshake failed (plain peer on the TLS port, untrusted or missing certificate)."""
    _audit(ctx, AuditEvent.ASSOCIATION_REJECTED, Outcome.MINOR_FAILURE, actor="", address=address,
           reason=f"TLS handshake failed: {reason}", security_alert=True)


def handle_too_large(event: Any, size: int, ctx: ReceiveContext) -> None:
    """An instance grew past ``max_instance_mb`` while arriving; the association is being aborted."""
    calling_ae, address = _requestor(event)
    _audit(ctx, AuditEvent.INSTANCE_REFUSED, Outcome.MINOR_FAILURE, actor=calling_ae, address=address,
           status="A-ABORT", reason=f"instance larger than max_instance_mb={ctx.settings.max_instance_mb:g} "
                                    f"({size // 2**20} MiB received so far)")


def handle_accepted(event: Any, ctx: ReceiveContext) -> None:
    """EVT_ACCEPTED: audit the association."""
    calling_ae, address = _requestor(event)
    _audit(ctx, AuditEvent.ASSOCIATION_ACCEPTED, Outcome.SUCCESS, actor=calling_ae, address=address)


def handle_closed(event: Any, ctx: ReceiveContext) -> None:
    """EVT_CONN_CLOSE: one ``instances_received`` audit row per study the association delivered."""
    for receipts in ctx.tally.close(event.assoc):
        _audit(ctx, AuditEvent.INSTANCES_RECEIVED, Outcome.SUCCESS, actor=receipts.calling_ae,
               study_uid=receipts.study_uid, patient_id=receipts.patient_id, patient_name=receipts.patient_name,
               address=receipts.address, instances=receipts.instances, unchanged=receipts.unchanged,
               sop_classes=dict(receipts.sop_classes))


def handle_echo(event: Any, ctx: ReceiveContext) -> int:
    """C-ECHO: success for every accepted association."""
    return SUCCESS


def handle_store(event: Any, ctx: ReceiveContext) -> int:
    """C-STORE: store the instance durably, record it, and only then answer success."""
    try:
        return _store(event, ctx)
    except Exception:
        log.exception("unexpected failure while storing an instance", extra=extra(stage="receive"))
        return UNEXPECTED


def _refuse(ctx: ReceiveContext, event: Any, status: int, reason: str, study_uid: str | None = None,
            log_reason: str | None = None) -> int:
    """Audit the refusal with its full reason; the log gets ``log_reason``, which quotes no values."""
    calling_ae, address = _requestor(event)
    log.warning("C-STORE refused with 0x%04X: %s", status, log_reason or reason, extra=extra(stage="receive"))
    _audit(ctx, AuditEvent.INSTANCE_REFUSED, Outcome.MINOR_FAILURE, actor=calling_ae, study_uid=study_uid,
           address=address, status=f"0x{status:04X}", reason=reason)
    return status


def _refuse_collision(ctx: ReceiveContext, event: Any, meta: InstanceMeta, reason: str) -> int:
    """0xC213 and a security-alert audit row naming the colliding UIDs (the log names only the kind)."""
    calling_ae, address = _requestor(event)
    log.warning("C-STORE refused with 0x%04X: %s", UID_COLLISION, reason, extra=extra(stage="receive"))
    _audit(ctx, AuditEvent.INSTANCE_REFUSED, Outcome.SERIOUS_FAILURE, actor=calling_ae, study_uid=meta.study_uid,
           patient_id=meta.patient_id, patient_name=meta.patient_name, address=address,
           status=f"0x{UID_COLLISION:04X}", reason=reason, security_alert=True,
           series_uid=meta.series_uid, sop_instance_uid=meta.sop_instance_uid)
    return UID_COLLISION


def _drop_orphan(ctx: ReceiveContext, path: Path) -> None:
    """Remove a refused instance's spool file unless a recorded instance owns that path."""
    try:
        with ctx.sessions() as session:
            owned = session.scalar(select(Instance.id).where(Instance.path == str(path))) is not None
        if not owned:
            path.unlink(missing_ok=True)
    except (SQLAlchemyError, OSError):
        log.exception("could not remove a refused instance's spool file", extra=extra(stage="receive"))


def _collision(ctx: ReceiveContext, meta: InstanceMeta) -> str:
    with read_scope(ctx.sessions) as session:  # never waits on the group commit's write lock
        return find_collision(session, meta)


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


def _meta(ds: Dataset, event: Any) -> InstanceMeta:
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
        transfer_syntax_uid=str(event.context.transfer_syntax),
        modality=str(ds.get("Modality", "") or "").strip("\x00 ")[:16],
        series_number=number,
        series_description=str(ds.get("SeriesDescription", "") or "").strip("\x00 "),
        patient_id=str(ds.get("PatientID", "") or "").strip("\x00 ")[:64],
        patient_name=str(ds.get("PatientName", "") or "").strip("\x00 ")[:324],
    )


def _size_refusal(event: Any, settings: Settings) -> str:
    """Why the received dataset is too large to decode, or "" (inflation is bounded, never unlimited)."""
    raw = event.request.DataSet
    size = len(raw.getbuffer()) if raw is not None else 0
    if size > settings.max_instance_mb * 2**20:
        return f"instance of {size // 2**20} MiB larger than max_instance_mb={settings.max_instance_mb:g}"
    if str(event.context.transfer_syntax) == DeflatedExplicitVRLittleEndian and raw is not None:
        try:
            inflate_bounded(raw.getvalue(), int(settings.max_inflated_mb * 2**20))
        except InflationLimit as exc:
            return str(exc)
        except zlib.error:
            return ""  # not deflate at all: decoding refuses it (0xC210)
    return ""


def _store(event: Any, ctx: ReceiveContext) -> int:
    too_large = _size_refusal(event, ctx.settings)
    if too_large:
        return _refuse(ctx, event, TOO_LARGE, too_large)
    try:
        ds = event.dataset
        meta = _meta(ds, event)
    except ValueError as exc:
        keyword = str(exc).split(":", 1)[0]
        return _refuse(ctx, event, BAD_UID, str(exc), log_reason=f"{keyword} missing or not a valid UID")
    except Exception as exc:
        return _refuse(ctx, event, CANNOT_DECODE, f"dataset could not be decoded: {type(exc).__name__}")
    request = event.request
    if (meta.sop_instance_uid != str(request.AffectedSOPInstanceUID).strip()
            or meta.sop_class_uid != str(request.AffectedSOPClassUID).strip()):
        return _refuse(ctx, event, UID_MISMATCH,
                       "SOP Class/Instance UID in the dataset differ from the C-STORE request", meta.study_uid)

    guard = disk_guard(ctx.settings)
    if guard:
        return _refuse(ctx, event, OUT_OF_RESOURCES_DISK, guard, meta.study_uid)
    path = spool_path(ctx.settings.spool_dir, meta.study_uid, meta.series_uid, meta.sop_instance_uid)
    try:
        # Before a spool write that would replace a file (a re-send, or a colliding study of another
        # patient under the same UIDs). A new path replaces nothing: the group commit checks it, and a
        # collision found there removes the new file again.
        replaces = path.exists()
        collision = _collision(ctx, meta) if replaces else ""
    except SQLAlchemyError as exc:
        return _refuse(ctx, event, OUT_OF_RESOURCES_DB, f"database error: {type(exc).__name__}", meta.study_uid)
    if collision:
        return _refuse_collision(ctx, event, meta, collision)
    raw = event.request.DataSet.getbuffer()
    head = b"".join((b"\x00" * 128, b"DICM", encode_file_meta(event.file_meta)))  # as encoded_dataset()
    try:  # the preamble and file meta, then the dataset as received, without joining them in memory
        sha256 = write_atomic(path, [head, raw], sync_dir=False)  # the committer fsyncs the folder
    except StoreError as exc:
        return _refuse(ctx, event, OUT_OF_RESOURCES_DISK, str(exc), meta.study_uid)

    calling_ae, address = _requestor(event)
    result = ctx.committer.record(Receipt(meta, path, sha256, len(head) + len(raw), calling_ae, address))
    if result.collision:  # a new path (or one raced in since the check above)
        _drop_orphan(ctx, path)
        if not replaces and not path.exists():
            remove_new_file(path, ctx.settings.spool_dir)  # and the folders made for it
        return _refuse_collision(ctx, event, meta, result.collision)
    if result.spool_error:
        return _refuse(ctx, event, OUT_OF_RESOURCES_DISK, result.spool_error, meta.study_uid)
    if result.db_error:
        if not replaces:  # rolled back: no row names the new file
            remove_new_file(path, ctx.settings.spool_dir)
        return _refuse(ctx, event, OUT_OF_RESOURCES_DB, result.db_error, meta.study_uid)
    ctx.tally.add(event.assoc, meta, calling_ae, address, changed=result.changed)
    return SUCCESS
