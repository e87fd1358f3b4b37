"""What every landing of an instance shares: its DICOM statuses, who sent it, its header's values, the
disk guard. The landing itself, for both transports, is :mod:`dicomnode.store.landing`.

- ``0x0000`` success: the instance is durably in the spool *and* in the database
- ``0xA700`` refused, out of resources: the disk guard tripped (free space below ``min_free_disk_mb``),
  the spool file could not be written, or the instance is too large (``max_instance_mb``,
  ``max_inflated_mb``)
- ``0xA701`` refused, out of resources: the database could not record the instance
- ``0xA900`` refused, dataset does not match SOP class: pixel data its attributes do not describe
- ``0xC210`` cannot understand: not decodable, not whole, or not strictly in its transfer syntax
- ``0xC211`` cannot understand: a required UID missing or invalid
- ``0xC212`` cannot understand: the dataset is not what its transport said (the C-STORE command's UIDs,
  the STOW-RS URL's study)
- ``0xC213`` cannot understand: a UID collision (the SOP Instance UID or the series already belongs to
  another study or series, or the study to another patient); never merged, a security alert. Also: the
  study is not the STOW-RS sender's (:mod:`dicomnode.store.ownership`)
- ``0xC2FF`` cannot understand: an unexpected error (logged with a traceback, no PHI)
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
from dicomnode.db import session_scope
from dicomnode.files import free_bytes
from dicomnode.jobs.models import Instance
from dicomnode.log import extra
from dicomnode.settings import Settings
from dicomnode.store.index import InstanceMeta
from dicomnode.store.spool import clean_uid

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
    when that user may store into any study (:mod:`dicomnode.store.ownership`)."""

    actor: str
    address: str
    calling_ae: str
    sender: str | None = None
    transport: str = "C-STORE"
    admin: bool = False


def audit(sessions: sessionmaker[Session], event: AuditEvent, outcome: Outcome, **fields: Any) -> None:
    """One audit row in its own transaction; a database failure is logged, never raised."""
    try:
        with session_scope(sessions) as session:
            record(session, event, outcome, **fields)
    except SQLAlchemyError:
        log.exception("could not write audit row", extra=extra(stage="receive", event=event.value))


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
