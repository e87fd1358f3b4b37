"""DIMSE and association event handlers: plain functions that return status codes and never raise.

Dependencies come in through a bound :class:`ReceiveContext`, never through globals. C-STORE datasets
arrive into files (:mod:`dicomnode.receive.incoming`), never into memory, and land through the one landing
path that STOW-RS takes too (:mod:`dicomnode.store.landing`: checks, statuses, the rename, the group
commit, refusals audited per burst), which counts receipts per association for one audit row per study
when it ends. Status codes (PS3.4 B.2.3 and PS3.7 C):

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.config_store import runtime_peers
from dicomnode.log import extra
from dicomnode.net.tls import client_certificate
from dicomnode.receive.accept import decide
from dicomnode.receive.incoming import discard_partial
from dicomnode.settings import Settings
from dicomnode.store.index import InstanceMeta
from dicomnode.store.ingest import SUCCESS, UNEXPECTED, Client, audit
from dicomnode.store.landing import Arrival, Landing, SharesLanding
from dicomnode.store.spool import Written
from dicomnode.store.validity import Refusal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceiveContext(SharesLanding):
    settings: Settings
    sessions: sessionmaker[Session]
    bursts: BurstAuditor | None = None  # refusals audited per burst (the node shares one; else made here)
    landing: Landing | None = None  # the node shares one between C-STORE and STOW-RS; else made here


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
        log.exception("could not write audit row", extra=extra(stage="receive", event=event.value))


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
    ctx.lands.close(event.assoc)


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
    """Land a received instance (:meth:`~dicomnode.store.landing.Landing.land`): success only once it is
    durably in the spool and the database; never raises."""
    try:
        arrival = Arrival(received.assoc, received.path, received.transfer_syntax,
                          command=(received.sop_class_uid, received.sop_instance_uid), written=received.written,
                          size=received.size, header=received.header, whole=received.whole)
        return ctx.lands.land(client_of(received.assoc), arrival).status
    except Exception:
        log.exception("unexpected failure while storing an instance", extra=extra(stage="receive"))
        return UNEXPECTED


def refuse_request(assoc: Any, status: int, reason: str, ctx: ReceiveContext) -> int:
    """Refuse (log, audit per burst) a C-STORE before its dataset is looked at: an incoming file that could
    not be written (0xA700), a SOP class that is not its presentation context's (0x0122)."""
    return ctx.lands.refuse(client_of(assoc), status, reason)


def client_of(assoc: Any) -> Client:
    calling_ae, address = requestor(assoc)
    return Client(actor=calling_ae, address=address, calling_ae=calling_ae)
