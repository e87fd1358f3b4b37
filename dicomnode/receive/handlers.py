"""DIMSE and association event handlers: plain functions that return status codes and never raise.

Dependencies come in through a bound :class:`ReceiveContext`, never through globals. A decoded instance
gets the checks, statuses and audit of :mod:`dicomnode.store.ingest` (shared with STOW-RS); C-STORE datasets
arrive into files (:mod:`dicomnode.receive.incoming`), never into memory; C-STORE lands each one, by
a rename, through the group commit (:mod:`dicomnode.store.committer`), so that concurrent associations share
fsyncs and commits, and audits receipts once per association and study (:mod:`dicomnode.receive.tally`).
Status codes (PS3.4 B.2.3 and PS3.7 C):

- ``0x0000`` success: the instance is durably in the spool *and* in the database
- ``0x0122`` refused, SOP class not supported: the request's SOP class is not its presentation
  context's (the node's own data phase, :mod:`dicomnode.receive.dataphase.native`; pynetdicom's aborts the
  association instead)
- ``0xA700`` refused, out of resources: free disk space is below ``min_free_disk_mb`` (the disk
  guard), or the spool file could not be written (disk full, I/O error)
- ``0xA700`` also: the instance is larger than ``max_instance_mb``, or a deflated one inflates beyond
  ``max_inflated_mb`` (one growing past twice ``max_instance_mb`` while it arrives is cut off with an
  A-ABORT: see :mod:`dicomnode.receive.limits`)
- ``0xA701`` refused, out of resources: the database could not record the instance
- ``0xA900`` refused, dataset does not match SOP class: pixel data its attributes do not describe
- ``0xC210`` cannot understand: the dataset could not be decoded, or is not whole (cut short, pixel data
  shorter than its attributes say, encapsulated pixel data missing a fragment or its delimiter), or is not
  strictly in its transfer syntax's encoding (:mod:`dicomnode.store.validity`); audited per burst
- ``0xC211`` cannot understand: a required UID is missing or invalid
- ``0xC212`` cannot understand: SOP Class/Instance UID in the dataset differ from the command's
- ``0xC213`` cannot understand: a UID collision; the SOP Instance UID or the series already belongs to
  another study or series, or the study to another patient. Never merged; audited as a security alert
- ``0xC2FF`` cannot understand: an unexpected error (logged with a traceback, no PHI)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom.dsutils import split_dataset
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.config_store import runtime_peers
from dicomnode.errors import StoreError
from dicomnode.log import extra, lenient_reading
from dicomnode.net.tls import client_certificate
from dicomnode.receive.accept import decide
from dicomnode.receive.dataphase.early import DEFER_BYTES
from dicomnode.receive.incoming import discard_partial
from dicomnode.receive.limits import InflationLimit, open_part10
from dicomnode.receive.tally import Tally
from dicomnode.settings import Settings
from dicomnode.store.committer import GroupCommitter, Receipt
from dicomnode.store.index import InstanceMeta
from dicomnode.store.ingest import (
    BAD_UID,
    CANNOT_DECODE,
    OUT_OF_RESOURCES_DB,
    OUT_OF_RESOURCES_DISK,
    SUCCESS,
    TOO_LARGE,
    UID_MISMATCH,
    UNEXPECTED,
    Client,
    audit,
    collision_before_write,
    disk_guard,
    drop_orphan,
    read_meta,
    refuse,
    refuse_collision,
)
from dicomnode.store.spool import Written, adopt_file, remove_new_file, spool_path
from dicomnode.store.validity import Refusal, file_refusal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceiveContext:
    settings: Settings
    sessions: sessionmaker[Session]
    bursts: BurstAuditor | None = None  # refusals audited per burst (the node shares one; else made here)
    committer: GroupCommitter = field(init=False)
    tally: Tally = field(init=False, default_factory=Tally)

    def __post_init__(self) -> None:
        object.__setattr__(self, "committer", GroupCommitter(self.sessions))
        if self.bursts is None:
            object.__setattr__(self, "bursts", BurstAuditor(self.sessions, self.settings.audit_burst_seconds))


def _audit(ctx: ReceiveContext, event: AuditEvent, outcome: Outcome, **fields: Any) -> None:
    audit(ctx.sessions, event, outcome, **fields)


def _refused(ctx: ReceiveContext, event: AuditEvent, kind: str, *, calling_ae: str, address: str,
             **detail: Any) -> None:
    """A refusal at the DICOM door, audited per burst of (event, ``kind``, address): the first of a burst is
    a row at once, the rest are counted (:mod:`dicomnode.audit.bursts`); never raises. The calling AE is not
    part of the key (a caller that claims a new AE title on every try is still one burst); the first row
    names the first AE title, the closing row the last."""
    bursts = ctx.bursts
    assert bursts is not None  # made in __post_init__ when not given
    key = json.dumps([event.value, kind, address])
    try:
        bursts.refused(event, key, actor=calling_ae, outcome=Outcome.MINOR_FAILURE, address=address,
                       calling_ae=calling_ae, **detail)
    except SQLAlchemyError:
        log.exception("could not write audit row", extra=extra(event=event.value))


@dataclass(frozen=True)
class Received:
    """A C-STORE dataset that has arrived, whole, into ``path`` (preamble and file meta, then the dataset
    as sent), on ``assoc``, under the accepted ``transfer_syntax``; the UIDs are the command's.
    ``written``: the file's digest and fsync, where its writer took care of them; ``header``: the header
    parse, and ``whole``: the whole-or-refused check (:mod:`dicomnode.store.validity`), where its writer
    began them while the dataset arrived (:mod:`dicomnode.receive.dataphase.early`)."""

    assoc: Any
    path: Path
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    written: Written | None = None
    header: Callable[[], InstanceMeta] | None = None
    size: int | None = None  # the file's, where its writer counted it
    whole: Callable[[], Refusal | None] | None = None


def requestor(assoc: Any) -> tuple[str, str]:
    """Calling AE title and address; at EVT_REQUESTED the title is only in the A-ASSOCIATE primitive."""
    req = assoc.requestor
    title = req.ae_title or (req.primitive.calling_ae_title if req.primitive is not None else "")
    return str(title).strip(), str(req.address)


def handle_requested(event: Any, ctx: ReceiveContext) -> None:
    """EVT_REQUESTED: reject unknown callers, and callers without the client certificate their peer names
    (:func:`~dicomnode.receive.accept.decide`), with A-ASSOCIATE-RJ; audited as security alerts, per burst."""
    try:
        calling_ae, address = requestor(event.assoc)
        primitive = event.assoc.requestor.primitive
        called_ae = primitive.called_ae_title if primitive is not None else ""
        decision = decide(own_ae=ctx.settings.ae_title, called_ae=str(called_ae), calling_ae=calling_ae,
                          address=address, peers=runtime_peers(ctx.settings, ctx.sessions),
                          require_known=ctx.settings.require_known_callers,
                          certificate=client_certificate(event.assoc.dul.socket.socket))
        if decision.accepted:
            return
        log.warning("association rejected: %s", decision.reason, extra=extra(stage="receive"))
        _refused(ctx, AuditEvent.ASSOCIATION_REJECTED, decision.kind, calling_ae=calling_ae, address=address,
                 reason=decision.reason, security_alert=True)
        event.assoc.acse.send_reject(0x01, 0x01, decision.diagnostic)
        event.assoc.kill()  # as pynetdicom's own rejections do: lets the DUL send the A-ASSOCIATE-RJ first
    except Exception:
        log.exception("association check failed; rejecting", extra=extra(stage="receive"))
        try:
            event.assoc.acse.send_reject(0x02, 0x01, 0x01)
        except Exception:  # the peer may already be gone: the association is torn down either way
            try:
                event.assoc.abort()
            except Exception:
                log.warning("could not abort the association", extra=extra(stage="receive"))


def handle_rejected(event: Any, ctx: ReceiveContext) -> None:
    """EVT_REJECTED: pynetdicom's own rejections (too many associations: local limit exceeded)."""
    calling_ae, address = requestor(event.assoc)
    log.warning("association rejected by the association limit", extra=extra(stage="receive"))
    _refused(ctx, AuditEvent.ASSOCIATION_REJECTED, "association_limit", calling_ae=calling_ae, address=address,
             reason=f"local limit exceeded (max_associations={ctx.settings.max_associations})")


def handle_tls_failure(address: str, reason: str, ctx: ReceiveContext) -> None:
    """A TLS handshake failed (plain peer on the TLS port, untrusted or missing certificate)."""
    _refused(ctx, AuditEvent.ASSOCIATION_REJECTED, "tls_handshake", calling_ae="", address=address,
             reason=f"TLS handshake failed: {reason}", security_alert=True)


def handle_silent(address: str, ctx: ReceiveContext) -> None:
    """A connection closed because no whole A-ASSOCIATE-RQ arrived within ``first_pdu_timeout_seconds``."""
    _refused(ctx, AuditEvent.ASSOCIATION_REJECTED, "first_pdu_timeout", calling_ae="", address=address,
             reason=f"no A-ASSOCIATE-RQ within first_pdu_timeout_seconds={ctx.settings.first_pdu_timeout_seconds:g}")


def handle_oversized_request(address: str, size: int, ctx: ReceiveContext) -> None:
    """A connection refused (A-ASSOCIATE-RJ) because its A-ASSOCIATE-RQ claims more than
    ``max_associate_rq_bytes``, before the rest of it was read."""
    _refused(ctx, AuditEvent.ASSOCIATION_REJECTED, "request_too_large", calling_ae="", address=address,
             reason=f"A-ASSOCIATE-RQ of {size} bytes is larger than "
                    f"max_associate_rq_bytes={ctx.settings.max_associate_rq_bytes}", security_alert=True)


def handle_too_large(event: Any, size: int, ctx: ReceiveContext) -> None:
    """:class:`~dicomnode.receive.limits.SizeGuard`'s refusal (pynetdicom's data path)."""
    refuse_too_large(event.assoc, size, ctx)


def refuse_too_large(assoc: Any, size: int, ctx: ReceiveContext) -> None:
    """An instance grew past twice ``max_instance_mb`` while arriving; the association is being aborted:
    logged (no values) and audited, whichever engine read the data."""
    log.warning("association aborted: instance larger than max_instance_mb", extra=extra(stage="receive"))
    calling_ae, address = requestor(assoc)
    _refused(ctx, AuditEvent.INSTANCE_REFUSED, "too_large", calling_ae=calling_ae, address=address,
             status="A-ABORT", reason=f"instance larger than twice max_instance_mb={ctx.settings.max_instance_mb:g} "
                                      f"({size // 2**20} MiB received so far)")


def handle_accepted(event: Any, ctx: ReceiveContext) -> None:
    """EVT_ACCEPTED: audit the association, and log its calling AE title (the address is in the audit row)."""
    calling_ae, address = requestor(event.assoc)
    log.info("association accepted", extra=extra(stage="receive", calling_ae=calling_ae))
    _audit(ctx, AuditEvent.ASSOCIATION_ACCEPTED, Outcome.SUCCESS, actor=calling_ae, address=address)


def handle_closed(event: Any, ctx: ReceiveContext) -> None:
    """EVT_CONN_CLOSE: one ``instances_received`` audit row per study the association delivered; the
    file of a dataset cut off while arriving is removed."""
    discard_partial(event.assoc)
    for receipts in ctx.tally.close(event.assoc):
        _audit(ctx, AuditEvent.INSTANCES_RECEIVED, Outcome.SUCCESS, actor=receipts.calling_ae,
               study_uid=receipts.study_uid, patient_id=receipts.patient_id, patient_name=receipts.patient_name,
               address=receipts.address, instances=receipts.instances, unchanged=receipts.unchanged,
               sop_classes=dict(receipts.sop_classes))


def handle_echo(event: Any, ctx: ReceiveContext) -> int:
    """C-ECHO: success for every accepted association."""
    return SUCCESS


def handle_store(event: Any, ctx: ReceiveContext) -> int:
    """C-STORE (pynetdicom's data path): store the instance durably, record it, and only then answer success."""
    try:
        request = event.request
        received = Received(event.assoc, event.dataset_path, str(event.context.transfer_syntax),
                            str(request.AffectedSOPClassUID).strip(), str(request.AffectedSOPInstanceUID).strip())
    except Exception:
        log.exception("unexpected failure while storing an instance", extra=extra(stage="receive"))
        return UNEXPECTED
    return store_received(received, ctx)


def store_received(received: Received, ctx: ReceiveContext) -> int:
    """Store a received instance durably, record it, and only then return success; never raises."""
    try:
        return _store(received, ctx)
    except Exception:
        log.exception("unexpected failure while storing an instance", extra=extra(stage="receive"))
        return UNEXPECTED


def refuse_request(assoc: Any, status: int, reason: str, ctx: ReceiveContext) -> int:
    """Refuse (log, audit) a C-STORE before its dataset is looked at: an incoming file that could not be
    written (0xA700), a SOP class that is not its presentation context's (0x0122)."""
    return refuse(ctx.sessions, client_of(assoc), status, reason)


def client_of(assoc: Any) -> Client:
    calling_ae, address = requestor(assoc)
    return Client(actor=calling_ae, address=address, calling_ae=calling_ae)


def _size_refusal(received: Received, settings: Settings) -> str:
    """Why the received dataset is too large to decode, or "" (inflation is bounded where it is decoded)."""
    path = received.path
    # the file holds the dataset after the preamble and file meta that pynetdicom wrote: a file within
    # the limit holds a dataset within it, and only a larger one needs the dataset's own size
    size = path.stat().st_size if received.size is None else received.size
    if size > settings.max_instance_mb * 2**20:
        size -= split_dataset(path)[1]
        if size > settings.max_instance_mb * 2**20:
            return f"instance of {size // 2**20} MiB larger than max_instance_mb={settings.max_instance_mb:g}"
    return ""


def _read_header(received: Received, settings: Settings) -> InstanceMeta:
    """Every element is parsed; values over 64 KiB (pixel data) are skipped by a seek, not read. A deflated
    dataset is inflated into a file first, bounded by ``max_inflated_mb`` (InflationLimit), never in memory."""
    with lenient_reading(), open_part10(received.path, int(settings.max_inflated_mb * 2**20), DEFER_BYTES) as (ds, _):
        return read_meta(ds, received.transfer_syntax)  # a dirty header's values, decoded leniently (dicomnode.log)


def _store(received: Received, ctx: ReceiveContext) -> int:
    client = client_of(received.assoc)
    too_large = _size_refusal(received, ctx.settings)
    if too_large:
        return refuse(ctx.sessions, client, TOO_LARGE, too_large)
    refused = (received.whole() if received.whole is not None else file_refusal(
        received.path, received.transfer_syntax, size=received.size,
        inflated_limit=int(ctx.settings.max_inflated_mb * 2**20)))
    if refused is not None:
        return _refuse_not_whole(ctx, client, refused)
    try:
        meta = received.header() if received.header is not None else _read_header(received, ctx.settings)
    except InflationLimit as exc:  # a ValueError: before the next
        return refuse(ctx.sessions, client, TOO_LARGE, str(exc))
    except ValueError as exc:
        keyword = str(exc).split(":", 1)[0]
        return refuse(ctx.sessions, client, BAD_UID, str(exc), log_reason=f"{keyword} missing or not a valid UID")
    except Exception as exc:
        return refuse(ctx.sessions, client, CANNOT_DECODE, f"dataset could not be decoded: {type(exc).__name__}")
    if meta.sop_instance_uid != received.sop_instance_uid or meta.sop_class_uid != received.sop_class_uid:
        return refuse(ctx.sessions, client, UID_MISMATCH,
                      "SOP Class/Instance UID in the dataset differ from the C-STORE request", meta.study_uid)
    return _land(received, ctx, client, meta)


def _refuse_not_whole(ctx: ReceiveContext, client: Client, refused: Refusal) -> int:
    """An instance not whole, or not in its transfer syntax's encoding (0xC210, 0xA900; 0xA700 inflated too
    large): logged (the reason quotes no value) and audited per burst of its status from its address (a
    modality that cuts every slice short is one burst, :mod:`dicomnode.audit.bursts`)."""
    status = f"0x{refused.status:04X}"
    log.warning("C-STORE refused with %s: %s", status, refused.reason, extra=extra(stage="receive"))
    _refused(ctx, AuditEvent.INSTANCE_REFUSED, f"not_whole {status}", calling_ae=client.calling_ae,
             address=client.address, status=status, reason=refused.reason, transport=client.transport)
    return refused.status


def _land(received: Received, ctx: ReceiveContext, client: Client, meta: InstanceMeta) -> int:
    """Disk guard, spool write (file fsynced), then the group commit (folder fsync, row committed)."""
    guard = disk_guard(ctx.settings)
    if guard:
        return refuse(ctx.sessions, client, OUT_OF_RESOURCES_DISK, guard, meta.study_uid)
    path = spool_path(ctx.settings.spool_dir, meta.study_uid, meta.series_uid, meta.sop_instance_uid)
    try:
        # Before a spool write that would replace a file (a re-send, or a colliding study of another
        # patient under the same UIDs). A new path replaces nothing: the group commit checks it, and a
        # collision found there removes the new file again.
        replaces = path.exists()
        collision = collision_before_write(ctx.sessions, meta) if replaces else ""
    except SQLAlchemyError as exc:
        return refuse(ctx.sessions, client, OUT_OF_RESOURCES_DB, f"database error: {type(exc).__name__}",
                      meta.study_uid)
    if collision:
        return refuse_collision(ctx.sessions, client, meta, collision)
    # the file the dataset arrived in, renamed into the spool (the committer fsyncs the folder); a new
    # path while the file's own fsync still runs (the commit waits for it)
    early = received.written is not None and not replaces
    try:
        sha256, size = adopt_file(received.path, path, received.written, early=early)
    except StoreError as exc:
        return refuse(ctx.sessions, client, OUT_OF_RESOURCES_DISK, str(exc), meta.study_uid)

    durable = received.written.durable if early and received.written is not None else None
    result = ctx.committer.record(Receipt(meta, path, sha256, size, client.calling_ae, client.address, durable))
    if result.collision:  # a new path (or one raced in since the check above)
        drop_orphan(ctx.sessions, path)
        if not replaces and not path.exists():
            remove_new_file(path, ctx.settings.spool_dir)  # and the folders made for it
        return refuse_collision(ctx.sessions, client, meta, result.collision)
    if result.spool_error:
        if not replaces:  # not recorded: no row names the new file
            remove_new_file(path, ctx.settings.spool_dir)
        return refuse(ctx.sessions, client, OUT_OF_RESOURCES_DISK, result.spool_error, meta.study_uid)
    if result.db_error:
        if not replaces:  # rolled back: no row names the new file
            remove_new_file(path, ctx.settings.spool_dir)
        return refuse(ctx.sessions, client, OUT_OF_RESOURCES_DB, result.db_error, meta.study_uid)
    ctx.tally.add(received.assoc, meta, client.calling_ae, client.address, changed=result.changed)
    return SUCCESS
