"""The one landing path of a received instance, whatever brought it: C-STORE (either data phase) or STOW-RS.

A transport writes the instance as it arrived into a Part-10 file on the spool's file system, and hands
it to :meth:`Landing.land` as an :class:`Arrival`; the transport keeps only what is its own (PDUs and
their size guard, multipart and its part files). :meth:`Landing.land`, in this order, each step a
refusal with its status (:mod:`dicomnode.store.ingest`):

1. size: larger than ``max_instance_mb`` (0xA700);
2. whole, and strictly in its transfer syntax's encoding (:mod:`dicomnode.store.validity`; the writer's
   own check where it began one while the dataset arrived): 0xC210, 0xA900, 0xA700 inflated too large;
3. the header, read leniently (dirty values real PACS send), its values over 64 KiB left on disk, a
   deflated one inflated into a file (:mod:`dicomnode.store.part10`): 0xC210 undecodable, 0xA700
   inflation limit, 0xC211 a UID missing or invalid;
4. what the transport expects: the C-STORE command's SOP Class and Instance UIDs, the STOW-RS URL's
   study (0xC212);
5. the disk guard (0xA700);
6. before a write that would replace a file (a re-send, or another patient's study under the same UIDs),
   or for a STOW-RS sender (whose study it must be: :mod:`dicomnode.store.ownership`): ownership and UID
   collision, read without a write lock (0xC213); a new path replaces nothing, and the group commit checks it;
7. the rename into the spool (:func:`~dicomnode.store.spool.adopt_file`; the file's fsync, or its
   writer's);
8. the group commit (:mod:`dicomnode.store.committer`): the folders fsynced once and the rows committed
   once for every instance waiting, from either transport (0xA700, 0xA701, 0xC213);
9. success (0x0000) only then.

Audit: a refusal is counted in its burst (:mod:`dicomnode.audit.bursts`; one key per event, transport,
status, sender and address): a modality that cuts every slice short is a row when it starts and a row
with the count when it ends. Receipts are counted per association or request (:meth:`close`: one
``instances_received`` row per study). Logs name no values.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import split_dataset
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.db import read_scope
from dicomnode.errors import StoreError
from dicomnode.log import extra, lenient_reading
from dicomnode.settings import Settings
from dicomnode.store.committer import GroupCommitter, Receipt
from dicomnode.store.index import InstanceMeta, find_collision, lookup
from dicomnode.store.ingest import (
    BAD_UID,
    CANNOT_DECODE,
    OUT_OF_RESOURCES_DB,
    OUT_OF_RESOURCES_DISK,
    SUCCESS,
    TOO_LARGE,
    UID_COLLISION,
    UID_MISMATCH,
    UNEXPECTED,
    Client,
    audit,
    disk_guard,
    drop_orphan,
    read_meta,
)
from dicomnode.store.ownership import NOT_OWNED, may_add
from dicomnode.store.part10 import DEFER_BYTES, InflationLimit, open_part10
from dicomnode.store.spool import Written, adopt_file, remove_new_file, spool_path
from dicomnode.store.tally import Tally
from dicomnode.store.validity import Refusal, file_refusal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    """An instance that has arrived whole into ``path`` (preamble, file meta, then the dataset as sent).

    ``key``: the association or request whose receipts it counts in; ``transfer_syntax``: the negotiated
    one (C-STORE), None for the file meta's (STOW-RS). ``command``: the C-STORE request's SOP Class and
    Instance UIDs, which the dataset's must equal; ``study_uid``: the STOW-RS URL's study. Where the
    writer began them while the dataset arrived (:mod:`dicomnode.receive.dataphase.early`): ``written``,
    the file's digest and fsync; ``size``, its size; ``header``, the header parse (raises ValueError for a
    bad UID); ``whole``, the whole-or-refused check."""

    key: Hashable
    path: Path
    transfer_syntax: str | None = None
    command: tuple[str, str] | None = None
    study_uid: str | None = None
    written: Written | None = None
    size: int | None = None
    header: Callable[[], InstanceMeta] | None = None
    whole: Callable[[], Refusal | None] | None = None


@dataclass(frozen=True)
class Landed:
    """What :meth:`Landing.land` did: the DICOM ``status``; the instance's UIDs as far as they were read
    (for a STOW-RS response entry); for a refusal, its ``reason`` (for the audit trail, never for the
    client) and whether the study was not the sender's; for a success, whether anything ``changed``
    (False: a re-send of the same content)."""

    status: int
    reason: str = ""
    meta: InstanceMeta | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    not_owned: bool = False
    changed: bool = False


def _size_refusal(arrival: Arrival, settings: Settings) -> str:
    """Why the dataset is too large to decode, or "" (inflation is bounded where it is decoded)."""
    # the file holds the dataset after the preamble and file meta: a file within the limit holds a
    # dataset within it, and only a larger one needs the dataset's own size
    size = arrival.path.stat().st_size if arrival.size is None else arrival.size
    if size > settings.max_instance_mb * 2**20:
        size -= split_dataset(arrival.path)[1]
        if size > settings.max_instance_mb * 2**20:
            return f"instance of {size // 2**20} MiB larger than max_instance_mb={settings.max_instance_mb:g}"
    return ""


def sop_uids(ds: Dataset) -> tuple[str, str]:
    """A header's SOP Class and Instance UIDs as a refusal names them: as they came, at most 64 characters
    each (a UI value's bound, PS3.5 6.2), "" where absent."""
    return str(ds.get("SOPClassUID", ""))[:64], str(ds.get("SOPInstanceUID", ""))[:64]


def _bad_uid(exc: ValueError, sop: tuple[str, str] = ("", "")) -> Landed:
    return Landed(BAD_UID, str(exc), sop_class_uid=sop[0], sop_instance_uid=sop[1])


def read_header(arrival: Arrival, inflated_limit: int) -> InstanceMeta | Landed:
    """The instance's header (:func:`~dicomnode.store.ingest.read_meta`), or the refusal of it."""
    if arrival.header is not None:
        try:
            return arrival.header()
        except ValueError as exc:  # read_meta's: a UID missing or invalid
            return _bad_uid(exc)
        except Exception as exc:  # kept by the early parse: what a whole-file parse raises
            return Landed(CANNOT_DECODE, f"dataset could not be decoded: {type(exc).__name__}")
    try:
        with lenient_reading(), open_part10(arrival.path, inflated_limit, DEFER_BYTES) as (ds, _):
            syntax = arrival.transfer_syntax or str(ds.file_meta.get("TransferSyntaxUID", "") or "")
            if not syntax:
                return Landed(CANNOT_DECODE, "no File Meta Information with a Transfer Syntax UID (PS3.10 7.1)")
            try:
                return read_meta(ds, syntax)  # a dirty header's values, decoded leniently (dicomnode.log)
            except ValueError as exc:
                return _bad_uid(exc, sop_uids(ds))
    except InflationLimit as exc:
        return Landed(TOO_LARGE, str(exc))
    except Exception as exc:  # zlib.error, InvalidDicomError, anything pydicom raises on bad bytes
        return Landed(CANNOT_DECODE, f"dataset could not be decoded: {type(exc).__name__}")


def _mismatch(arrival: Arrival, meta: InstanceMeta) -> str:
    """Why the dataset is not what its transport said it is, or ""."""
    if arrival.command is not None and arrival.command != (meta.sop_class_uid, meta.sop_instance_uid):
        return "SOP Class/Instance UID in the dataset differ from the C-STORE request"
    if arrival.study_uid is not None and arrival.study_uid != meta.study_uid:
        return "the instance is not of the study named in the STOW-RS URL"
    return ""


def check_before_write(sessions: sessionmaker[Session], meta: InstanceMeta, client: Client) -> Landed | None:
    """The refusal of ``meta`` for what the database holds (None: it may be written), read without a write
    lock: a study that is not ``client``'s first, then a UID collision. The same statements run whether
    the study exists or not, and both refusals are 0xC213 (:mod:`dicomnode.store.ownership`)."""
    with read_scope(sessions) as session:  # never waits on the group commit's write lock
        known = lookup(session, meta)
        if known.study is not None and not may_add(session, meta, client.sender, client.admin):
            return Landed(UID_COLLISION, NOT_OWNED, meta, not_owned=True)
        collision = find_collision(session, meta, known)
    return Landed(UID_COLLISION, collision, meta) if collision else None


class Landing:
    """:meth:`land` for both transports, sharing one group commit, one receipt tally and the node's burst
    auditor (module docstring)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], bursts: BurstAuditor) -> None:
        self.settings = settings
        self.sessions = sessions
        self.bursts = bursts
        self.committer = GroupCommitter(sessions)
        self.tally = Tally()

    def land(self, client: Client, arrival: Arrival) -> Landed:
        """Land one instance (module docstring); never raises for the instance's faults. The refusal is
        audited and logged here; the receipt is counted for :meth:`close`."""
        try:
            landed = self._land(client, arrival)
        except Exception:
            log.exception("unexpected failure while storing an instance", extra=extra(stage="receive"))
            landed = Landed(UNEXPECTED, "unexpected error")
        if landed.status != SUCCESS:
            self.refused(client, landed)
        elif landed.meta is not None:
            self.tally.add(arrival.key, landed.meta, client.actor, client.address, client.transport,
                           changed=landed.changed)
        return landed

    def _land(self, client: Client, arrival: Arrival) -> Landed:
        settings = self.settings
        too_large = _size_refusal(arrival, settings)
        if too_large:
            return Landed(TOO_LARGE, too_large)
        inflated_limit = settings.max_inflated_bytes
        refused = (arrival.whole() if arrival.whole is not None else file_refusal(
            arrival.path, arrival.transfer_syntax, size=arrival.size, inflated_limit=inflated_limit))
        if refused is not None:
            return Landed(refused.status, refused.reason)
        meta = read_header(arrival, inflated_limit)
        if isinstance(meta, Landed):
            return meta
        mismatch = _mismatch(arrival, meta)
        if mismatch:
            return Landed(UID_MISMATCH, mismatch, meta)
        guard = disk_guard(settings)
        if guard:
            return Landed(OUT_OF_RESOURCES_DISK, guard, meta)
        path = spool_path(settings.spool_dir, meta.study_uid, meta.series_uid, meta.sop_instance_uid)
        replaces = path.exists()
        try:
            refusal = check_before_write(self.sessions, meta, client) if replaces or client.sender else None
        except SQLAlchemyError as exc:
            return Landed(OUT_OF_RESOURCES_DB, f"database error: {type(exc).__name__}", meta)
        if refusal is not None:
            return refusal
        return self._commit(client, arrival, meta, path, replaces)

    def _commit(self, client: Client, arrival: Arrival, meta: InstanceMeta, path: Path, replaces: bool) -> Landed:
        # renamed into the spool (the committer fsyncs the folder); a new path while the file's own fsync
        # still runs (the commit waits for it)
        early = arrival.written is not None and not replaces
        try:
            sha256, size = adopt_file(arrival.path, path, arrival.written, early=early)
        except StoreError as exc:
            return Landed(OUT_OF_RESOURCES_DISK, str(exc), meta)
        durable = arrival.written.durable if early and arrival.written is not None else None
        result = self.committer.record(Receipt(meta, path, sha256, size, client.calling_ae, client.address,
                                               durable, actor=client.actor, sender=client.sender,
                                               admin=client.admin))
        if result.collision:  # a new path (or one raced in since the check above)
            drop_orphan(self.sessions, path)
            if not replaces and not path.exists():
                remove_new_file(path, self.settings.spool_dir)  # and the folders made for it
            return Landed(UID_COLLISION, result.collision, meta, not_owned=result.not_owned)
        error, status = ((result.spool_error, OUT_OF_RESOURCES_DISK) if result.spool_error
                         else (result.db_error, OUT_OF_RESOURCES_DB))
        if error:
            if not replaces:  # not recorded: no row names the new file
                remove_new_file(path, self.settings.spool_dir)
            return Landed(status, error, meta)
        return Landed(SUCCESS, meta=meta, sop_class_uid=meta.sop_class_uid,
                      sop_instance_uid=meta.sop_instance_uid, changed=result.changed)

    def refused(self, client: Client, landed: Landed) -> None:
        """Log (no values) and audit a refusal, per burst of (event, transport, status, sender, address);
        never raises for a database failure."""
        status = f"0x{landed.status:04X}"
        meta = landed.meta
        # the reasons quote no values, but read_meta's, which may quote the bad UID: its keyword only
        told = (f"{landed.reason.split(':', 1)[0]} missing or not a valid UID" if landed.status == BAD_UID
                else landed.reason)
        log.warning("%s refused with %s: %s", client.transport, status, told, extra=extra(stage="receive"))
        fields: dict[str, Any] = {"address": client.address, "calling_ae": client.calling_ae, "status": status,
                                  "reason": landed.reason, "transport": client.transport,
                                  "study_uid": meta.study_uid if meta is not None else None}
        event, outcome = AuditEvent.INSTANCE_REFUSED, Outcome.MINOR_FAILURE
        if landed.not_owned:
            event, outcome = AuditEvent.STUDY_NOT_OWNED, Outcome.SERIOUS_FAILURE
            fields["security_alert"] = True
        elif landed.status == UID_COLLISION:
            outcome = Outcome.SERIOUS_FAILURE
            fields["security_alert"] = True
            if meta is not None:
                fields.update(patient_id=meta.patient_id, patient_name=meta.patient_name,
                              series_uid=meta.series_uid, sop_instance_uid=meta.sop_instance_uid)
        key = json.dumps([event.value, client.transport, status, client.actor, client.address])
        try:
            self.bursts.refused(event, key, actor=client.actor, outcome=outcome, **fields)
        except SQLAlchemyError:
            log.exception("could not write audit row", extra=extra(stage="receive", event=event.value))

    def refuse(self, client: Client, status: int, reason: str) -> int:
        """Refuse an instance before it reached :meth:`land` (its file could not be written, its SOP class
        is not its presentation context's): audited as :meth:`land`'s refusals; returns ``status``."""
        self.refused(client, Landed(status, reason))
        return status

    def close(self, key: Hashable) -> None:
        """One ``instances_received`` audit row per study that the association or request ``key``
        delivered; never raises for a database failure."""
        for receipts in self.tally.close(key):
            audit(self.sessions, AuditEvent.INSTANCES_RECEIVED, Outcome.SUCCESS, actor=receipts.calling_ae,
                  study_uid=receipts.study_uid, patient_id=receipts.patient_id,
                  patient_name=receipts.patient_name, address=receipts.address, instances=receipts.instances,
                  unchanged=receipts.unchanged, sop_classes=dict(receipts.sop_classes),
                  transport=receipts.transport)


class SharesLanding:
    """For a frozen dataclass with ``settings``, ``sessions``, ``bursts`` and ``landing`` fields (the
    receiver's and the admin app's contexts): the burst auditor and the landing given (the node shares
    one of each between C-STORE and STOW-RS), else new ones."""

    settings: Settings
    sessions: sessionmaker[Session]
    bursts: BurstAuditor | None
    landing: Landing | None

    def __post_init__(self) -> None:
        bursts = self.bursts or BurstAuditor(self.sessions, self.settings.audit_burst_seconds)
        object.__setattr__(self, "bursts", bursts)
        object.__setattr__(self, "landing", self.landing or Landing(self.settings, self.sessions, bursts))

    @property
    def lands(self) -> Landing:
        assert self.landing is not None  # made in __post_init__ when not given
        return self.landing
