"""STOW-RS (PS3.18 10.5): each part of a request through the same durable path as a C-STORE.

Every part gets its own entry in the Store Instances Response (PS3.18 10.5.3): in
ReferencedSOPSequence when stored, in FailedSOPSequence with a FailureReason otherwise. The statuses
are the node's C-STORE statuses (:mod:`dicomnode.store.ingest`): 0xA700 size, inflation or disk
guard; 0xA701 database; 0xC210 cannot decode (not Part 10, truncated); 0xC211 a UID missing or
invalid; 0xC212 the instance is not of the study named in the URL; 0xC213 UID collision, or a study that
is not the sender's (the same answer: :mod:`dicomnode.store.ingest`, "Ownership").
HTTP: 200 when every instance was stored, 202 when some were, 409 when none was (never a silent
partial accept).

The audit trail gets, per request, one ``instances_received`` row per study stored into (the count, the
re-sends that changed nothing, the SOP classes: as C-STORE audits an association), and the refused parts
per burst (:class:`~dicomnode.audit.bursts.BurstAuditor`, one key per kind of refusal, sender and address):
a body of 10,000 bad parts, or a flood of such requests, is a row when it starts and a row with the count
when it ends. A store into a study that is not the sender's is a ``study_not_owned`` security alert.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent, Outcome, Subject
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.jobs.models import Study
from dicomnode.log import extra
from dicomnode.receive.limits import InflationLimit, inflate_bounded
from dicomnode.settings import Settings
from dicomnode.store.ingest import (
    BAD_UID,
    CANNOT_DECODE,
    SUCCESS,
    TOO_LARGE,
    UID_COLLISION,
    UID_MISMATCH,
    Client,
    ingest,
    read_meta,
)

log = logging.getLogger(__name__)

UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class PartOutcome:
    """One part's entry in the response; ``reason``, ``not_owned`` and ``changed`` are for the audit trail."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    study_uid: str = ""
    series_uid: str = ""
    reason: str = ""  # why it was refused (may quote a value: never sent to the client, never logged)
    not_owned: bool = False  # refused: the study is not the sender's
    changed: bool = True  # stored: False for a re-send of the same content

    @property
    def stored(self) -> bool:
        return self.status == SUCCESS or 0xB000 <= self.status <= 0xBFFF


def _truncation(ds: Dataset) -> str:
    """Why ``ds`` was cut short, or "": a value shorter than its length, or pixel data missing bytes."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (isinstance(raw, RawDataElement) and raw.length != UNDEFINED and raw.value is not None
                and len(raw.value) < raw.length):
            return "truncated: an element's value is shorter than its length"
    if "Rows" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = (int(ds.Rows) * int(ds.get("Columns", 0)) * int(ds.get("SamplesPerPixel", 1))
                    * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("BitsAllocated", 8))) // 8
        if len(ds.get("PixelData", b"") or b"") < expected:
            return "truncated: pixel data shorter than Rows x Columns x frames"
    return ""


def part10(part: bytes) -> bytes:
    """``part`` with the 128-byte preamble and ``DICM`` prefix (PS3.10 7.1) when it starts right at its
    File Meta Information, as some clients send it (pydicom's ``dcmwrite`` of a plain Dataset)."""
    if part[128:132] != b"DICM" and part[:2] == b"\x02\x00":
        return bytes(128) + b"DICM" + part
    return part


def decode(part: bytes, settings: Settings) -> tuple[Dataset | None, int, str]:
    """The part (as :func:`part10` made it) as a dataset, or None with the status and reason that refuse it."""
    if len(part) > settings.max_instance_mb * 2**20:
        return None, TOO_LARGE, (f"instance of {len(part) // 2**20} MiB larger than "
                                 f"max_instance_mb={settings.max_instance_mb:g}")
    try:
        fp = BytesIO(part)
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if "TransferSyntaxUID" not in meta:
            raise ValueError("no File Meta Information with a Transfer Syntax UID (PS3.10 7.1)")
        if UID(meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian:
            inflate_bounded(part[fp.tell():], int(settings.max_inflated_mb * 2**20))
        ds = dcmread(BytesIO(part))
    except InflationLimit as exc:
        return None, TOO_LARGE, str(exc)
    except Exception as exc:  # zlib.error, InvalidDicomError, anything pydicom raises on bad bytes
        return None, CANNOT_DECODE, f"not a readable DICOM Part-10 instance: {type(exc).__name__}"
    try:
        truncated = _truncation(ds)
    except Exception as exc:
        truncated = f"unreadable: {type(exc).__name__}"
    if truncated:
        return None, CANNOT_DECODE, truncated
    return ds, SUCCESS, ""


def store_part(settings: Settings, sessions: sessionmaker[Session], client: Client, part: bytes,
               study_uid: str | None) -> PartOutcome:
    """One part: decode, check, :func:`~dicomnode.store.ingest.ingest`; never raises for the part's faults.
    Audits nothing: :func:`audit_request` audits the request's outcomes together."""
    part = part10(part)
    ds, status, reason = decode(part, settings)
    if ds is None:
        return PartOutcome("", "", status, reason=reason)
    sop_class, sop_instance = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    try:
        meta = read_meta(ds, str(ds.file_meta.get("TransferSyntaxUID", "")))
    except ValueError as exc:
        return PartOutcome(sop_class[:64], sop_instance[:64], BAD_UID, reason=str(exc))
    if study_uid is not None and meta.study_uid != study_uid:
        return PartOutcome(meta.sop_class_uid, meta.sop_instance_uid, UID_MISMATCH, meta.study_uid,
                           reason="the instance is not of the study named in the STOW-RS URL")
    landed = ingest(settings, sessions, client, meta, part)
    return PartOutcome(meta.sop_class_uid, meta.sop_instance_uid, landed.status, meta.study_uid, meta.series_uid,
                       landed.reason, landed.not_owned, landed.changed)


def _refused(bursts: BurstAuditor, client: Client, outcome: PartOutcome) -> None:
    """Count one refused part in its burst: one key per kind of refusal, sender and address."""
    status = f"0x{outcome.status:04X}"
    fields = {"address": client.address, "status": status, "reason": outcome.reason,
              "study_uid": outcome.study_uid or None, "transport": client.transport}
    if outcome.not_owned:
        bursts.refused(AuditEvent.STUDY_NOT_OWNED, repr(("stow", "not owned", client.actor, client.address)),
                       actor=client.actor, outcome=Outcome.SERIOUS_FAILURE, security_alert=True, **fields)
    elif outcome.status == UID_COLLISION:
        bursts.refused(AuditEvent.INSTANCE_REFUSED, repr(("stow", status, client.actor, client.address)),
                       actor=client.actor, outcome=Outcome.SERIOUS_FAILURE, security_alert=True, **fields)
    else:
        bursts.refused(AuditEvent.INSTANCE_REFUSED, repr(("stow", status, client.actor, client.address)),
                       actor=client.actor, outcome=Outcome.MINOR_FAILURE, **fields)


def _receipts(session: Session, client: Client, stored: list[PartOutcome]) -> None:
    """One ``instances_received`` row per study of the stored parts."""
    by_study: dict[str, list[PartOutcome]] = {}
    for outcome in stored:
        by_study.setdefault(outcome.study_uid, []).append(outcome)
    for study_uid, parts in by_study.items():
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        subject: Subject = study.subject() if study is not None else {
            "study_uid": study_uid, "patient_id": None, "patient_name": None}
        record(session, AuditEvent.INSTANCES_RECEIVED, actor=client.actor, **subject, address=client.address,
               instances=len(parts), unchanged=sum(not p.changed for p in parts),
               sop_classes=dict(Counter(p.sop_class_uid for p in parts)), transport=client.transport)


def audit_request(sessions: sessionmaker[Session], bursts: BurstAuditor, client: Client,
                  outcomes: list[PartOutcome]) -> None:
    """Audit one request's parts (module docstring) and log one line naming no values; never raises for
    a database failure (the parts' own rows are committed already)."""
    refused = [o for o in outcomes if not o.stored]
    try:
        for outcome in refused:
            _refused(bursts, client, outcome)
        if len(refused) < len(outcomes):
            with session_scope(sessions) as session:
                _receipts(session, client, [o for o in outcomes if o.stored])
    except SQLAlchemyError:
        log.exception("could not audit a STOW-RS request", extra=extra(stage="receive"))
    if refused:
        statuses = Counter(f"0x{o.status:04X}" for o in refused)
        log.warning("STOW-RS: %d of %d instances refused (%s)", len(refused), len(outcomes),
                    ", ".join(f"{status} x{n}" for status, n in sorted(statuses.items())),
                    extra=extra(stage="receive"))


def _reference(outcome: PartOutcome, base_url: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    if outcome.stored:
        item.RetrieveURL = (f"{base_url}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                            f"/instances/{outcome.sop_instance_uid}")
    return item


def store_response(outcomes: list[PartOutcome], base_url: str) -> tuple[int, Dataset]:
    """The HTTP status and the Store Instances Response (PS3.18 Table 10.5.3-1) for ``outcomes``."""
    response = Dataset()
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    if stored:
        response.ReferencedSOPSequence = [_reference(o, base_url) for o in stored]
    if failed:
        items = []
        for outcome in failed:
            item = _reference(outcome, base_url)
            item.FailureReason = outcome.status
            items.append(item)
        response.FailedSOPSequence = items
    status = 200 if not failed else 202 if stored else 409
    return status, response
