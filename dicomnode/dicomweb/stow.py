"""STOW-RS (PS3.18 10.5): each part of a request through the same durable path as a C-STORE.

Every part gets its own entry in the Store Instances Response (PS3.18 10.5.3): in
ReferencedSOPSequence when stored, in FailedSOPSequence with a FailureReason otherwise. The statuses
are the node's C-STORE statuses (:mod:`dicomnode.store.ingest`): 0xA700 size, inflation or disk
guard; 0xA701 database; 0xC210 cannot decode (not Part 10, truncated); 0xC211 a UID missing or
invalid; 0xC212 the instance is not of the study named in the URL; 0xC213 UID collision.
HTTP: 200 when every instance was stored, 202 when some were, 409 when none was (never a silent
partial accept).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.receive.limits import InflationLimit, inflate_bounded
from dicomnode.settings import Settings
from dicomnode.store.ingest import (
    BAD_UID,
    CANNOT_DECODE,
    SUCCESS,
    TOO_LARGE,
    UID_MISMATCH,
    Client,
    ingest,
    read_meta,
    refuse,
)

UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class PartOutcome:
    sop_class_uid: str
    sop_instance_uid: str
    status: int
    study_uid: str = ""
    series_uid: str = ""

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
    """One part: decode, check, :func:`~dicomnode.store.ingest.ingest`; never raises for the part's faults."""
    part = part10(part)
    ds, status, reason = decode(part, settings)
    if ds is None:
        return PartOutcome("", "", refuse(sessions, client, status, reason))
    sop_class, sop_instance = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    try:
        meta = read_meta(ds, str(ds.file_meta.get("TransferSyntaxUID", "")))
    except ValueError as exc:
        keyword = str(exc).split(":", 1)[0]
        status = refuse(sessions, client, BAD_UID, str(exc), log_reason=f"{keyword} missing or not a valid UID")
        return PartOutcome(sop_class[:64], sop_instance[:64], status)
    if study_uid is not None and meta.study_uid != study_uid:
        status = refuse(sessions, client, UID_MISMATCH, "the instance is not of the study named in the STOW-RS URL",
                        meta.study_uid)
        return PartOutcome(meta.sop_class_uid, meta.sop_instance_uid, status)
    status = ingest(settings, sessions, client, meta, part)
    return PartOutcome(meta.sop_class_uid, meta.sop_instance_uid, status, meta.study_uid, meta.series_uid)


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
