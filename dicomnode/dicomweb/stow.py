"""STOW-RS (PS3.18 10.5): each part of a request through the same durable path as a C-STORE.

Every part gets its own entry in the Store Instances Response (PS3.18 10.5.3): in
ReferencedSOPSequence when stored, in FailedSOPSequence with a FailureReason otherwise. Each part lands
through the one landing path that C-STORE takes too (:mod:`dicomnode.store.landing`), so the statuses are
the node's C-STORE statuses (:mod:`dicomnode.store.ingest`): 0xA700 size, inflation or disk guard;
0xA701 database; 0xC210 cannot decode (not Part 10; not whole or not in its encoding, and 0xA900 pixel
data its attributes do not describe: :mod:`dicomnode.store.validity`); 0xC211 a UID missing or invalid;
0xC212 the instance is not of the study named in the URL; 0xC213 UID collision, or a study that is not
the sender's (the same answer: :mod:`dicomnode.store.ownership`).
HTTP: 200 when every instance was stored, 202 when some were, 409 when none was (never a silent
partial accept).

A request's body is read as it arrives (:class:`~dicomnode.net.multipart.RelatedReader`), each part into
its own file on the spool's file system (:class:`PartFiles`), never into memory; each part is held to
``max_instance_mb`` while it arrives. Once the whole body has arrived well-formed, each part lands from
its file (:meth:`~dicomnode.store.landing.Landing.land`).

The audit trail gets, per request, one ``instances_received`` row per study stored into (the count, the
re-sends that changed nothing, the SOP classes: as C-STORE audits an association), and the refused parts
per burst (:class:`~dicomnode.audit.bursts.BurstAuditor`, one key per kind of refusal, sender and address):
a body of 10,000 bad parts, or a flood of such requests, is a row when it starts and a row with the count
when it ends. A store into a study that is not the sender's is a ``study_not_owned`` security alert. A
part refused while it arrived (too large, disk guard) is audited the same way.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset

from dicomnode.files import make_private_dirs
from dicomnode.log import extra
from dicomnode.receive.incoming import incoming_dir
from dicomnode.settings import Settings
from dicomnode.store.ingest import CANNOT_DECODE, OUT_OF_RESOURCES_DISK, SUCCESS, TOO_LARGE, Client, disk_guard
from dicomnode.store.landing import Arrival, Landed, Landing, sop_uids
from dicomnode.store.part10 import DEFER_BYTES, open_part10

log = logging.getLogger(__name__)

PREFIX = 132  # a Part-10 file's preamble and "DICM" (PS3.10 7.1)
GUARD_STEP = 64 * 2**20  # the disk guard is asked again each time a request's parts have grown by this much


@dataclass(frozen=True)
class PartOutcome:
    """One part's entry in the response (the landing audits it: :meth:`Landing.land`, :meth:`Landing.refused`)."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    study_uid: str = ""
    series_uid: str = ""

    @property
    def stored(self) -> bool:
        return self.status == SUCCESS or 0xB000 <= self.status <= 0xBFFF


def _prefix(head: bytes | bytearray) -> bytes:
    """The 128-byte preamble and ``DICM`` prefix (PS3.10 7.1) that a part starting with ``head`` lacks,
    when it starts right at its File Meta Information, as some clients send it (pydicom's ``dcmwrite``
    of a plain Dataset); else b""."""
    if head[128:132] != b"DICM" and head[:2] == b"\x02\x00":
        return bytes(128) + b"DICM"
    return b""


@dataclass(frozen=True)
class Arrived:
    """One part as it arrived: its file in ``spool_dir/.incoming``, or (``path`` None) the status and
    reason that refused it while it arrived."""

    path: Path | None
    status: int = SUCCESS
    reason: str = ""
    sop_class_uid: str = ""  # of a refused part, where what of it was written named them
    sop_instance_uid: str = ""


class PartFiles:
    """The :class:`~dicomnode.net.multipart.PartSink` of a STOW-RS request: each part goes into its own
    file in ``spool_dir/.incoming`` (the spool's file system, so that it lands by a rename) as it arrives,
    never into memory, with the preamble it lacks (:func:`_prefix`). A part that grows past
    ``max_instance_mb`` (written up to it), or arrives while the disk guard trips (asked at the first part
    and for every 64 MiB) or its file cannot be written, is refused with 0xA700 there and then: its file is
    removed and the rest of it is not written, once its UIDs are read from what was (:func:`_named`: the
    response's entry names the instance where it can). A part shorter than a preamble that does not start
    at its File Meta Information is no Part-10 file (0xC210) and gets none. :meth:`discard` removes every
    file that did not land, once the request has been answered (or has failed)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limit = int(settings.max_instance_mb * 2**20)
        self.arrived: list[Arrived] = []
        self._paths: list[Path] = []
        self._file: BinaryIO | None = None
        self._current: Path | None = None  # the file of the part arriving now
        self._head = bytearray()
        self._size = 0
        self._total = 0  # of every part's content so far
        self._guarded: str | None = None  # the disk guard's last answer; None: not asked yet
        self._refusal: tuple[int, str] | None = None
        self._named = ("", "")  # the refused part's SOP Class and Instance UIDs

    def begin(self) -> None:
        self._head.clear()
        self._size, self._refusal, self._current, self._named = 0, None, None, ("", "")
        if self._guarded is None or self._guarded:
            self._guard()

    def write(self, data: memoryview) -> None:
        size, self._size = self._size, self._size + len(data)
        total, self._total = self._total, self._total + len(data)
        if self._refusal is not None:
            return
        if self._size > self.limit:
            self._keep(data[:max(self.limit - size, 0)])  # up to the limit, for its header (:func:`_named`)
            self._refuse(TOO_LARGE, "")  # the reason names the whole size, once it is known
        elif self._total // GUARD_STEP != total // GUARD_STEP and self._guard():
            return
        else:
            self._keep(data)

    def _keep(self, data: memoryview) -> None:
        if self._file is not None:
            self._put(data)
        else:
            self._head += data
            if len(self._head) >= PREFIX:
                self._open()

    def end(self) -> None:
        if self._refusal is None and self._file is None:  # a part shorter than a preamble
            if _prefix(self._head):
                self._open()
            else:
                self._refusal = (CANNOT_DECODE, "not a readable DICOM Part-10 instance: shorter than its preamble")
        self._close()
        if self._refusal is not None:
            status, reason = self._refusal
            reason = reason or (f"instance of {self._size // 2**20} MiB larger than "
                                f"max_instance_mb={self.settings.max_instance_mb:g}")
            self.arrived.append(Arrived(None, status, reason, *self._named))
        else:
            self.arrived.append(Arrived(self._current))

    def discard(self) -> None:
        """Remove every part's file that is still in ``.incoming`` (refused, or never landed)."""
        self._close()
        for path in self._paths:
            path.unlink(missing_ok=True)

    def _guard(self) -> bool:
        self._guarded = disk_guard(self.settings)
        if self._guarded:
            self._refuse(OUT_OF_RESOURCES_DISK, self._guarded)
        return bool(self._guarded)

    def _open(self) -> None:
        try:
            folder = incoming_dir(self.settings)
            make_private_dirs(folder)
            fd, name = tempfile.mkstemp(prefix="stow-", suffix=".dcm", dir=folder)  # owner-only
        except OSError as exc:
            self._refuse(OUT_OF_RESOURCES_DISK, _cannot_write(exc))
            return
        self._current = Path(name)
        self._paths.append(self._current)
        self._file = os.fdopen(fd, "wb")
        self._put(_prefix(self._head) + self._head)
        self._head.clear()

    def _put(self, data: bytes | memoryview) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:
            self._refuse(OUT_OF_RESOURCES_DISK, _cannot_write(exc))

    def _refuse(self, status: int, reason: str) -> None:
        self._refusal = (status, reason)
        self._head.clear()
        self._close()
        if self._current is not None:
            self._named = _named(self._current, self.limit)
            self._current.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:  # the last buffered bytes could not be written
                self._refuse(OUT_OF_RESOURCES_DISK, _cannot_write(exc))


def _cannot_write(exc: OSError) -> str:
    """A refused part's reason when its spool file could not be made or written: the file system's words."""
    return f"could not write spool file: {exc.strerror or exc}"


def _named(path: Path, limit: int) -> tuple[str, str]:
    """The SOP Class and Instance UIDs of a part refused while it arrived, from what of it was written (the
    header comes first, values over DEFER_BYTES skipped); ("", "") where that names none."""
    try:
        with open_part10(path, limit, DEFER_BYTES) as (ds, _):
            return sop_uids(ds)
    except Exception:  # a part cut off anywhere, or never DICOM: whatever pydicom raises
        return "", ""


def store_parts(landing: Landing, client: Client, parts: list[Arrived], study_uid: str | None
                ) -> list[PartOutcome]:
    """Land each part (:meth:`~dicomnode.store.landing.Landing.land`), audit the request's receipts (one row
    per study) and log one line naming no values; never raises for a part's faults."""
    key = object()  # this request, for the receipts
    outcomes = []
    for part in parts:
        if part.path is None:
            landed = Landed(part.status, part.reason, sop_class_uid=part.sop_class_uid,
                            sop_instance_uid=part.sop_instance_uid)
            landing.refused(client, landed)
        else:
            landed = landing.land(client, Arrival(key, part.path, study_uid=study_uid))
        meta = landed.meta
        outcomes.append(PartOutcome(meta.sop_class_uid if meta else landed.sop_class_uid,
                                    meta.sop_instance_uid if meta else landed.sop_instance_uid, landed.status,
                                    meta.study_uid if meta else "", meta.series_uid if meta else ""))
    landing.close(key)
    refused = [o for o in outcomes if not o.stored]
    if refused:
        statuses = Counter(f"0x{o.status:04X}" for o in refused)
        log.warning("STOW-RS: %d of %d instances refused (%s)", len(refused), len(outcomes),
                    ", ".join(f"{status} x{n}" for status, n in sorted(statuses.items())),
                    extra=extra(stage="receive"))
    return outcomes


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
