"""STOW-RS details a client, an auditor or IT staff rely on, over a real loopback socket.

Each stored part is referenced with its own RetrieveURL and each refused one with its own UIDs (one dropped
while it arrived too, where its header came); a part whose
preamble happens to begin like File Meta Information is stored as sent; the reasons of refusals (a part shorter
than a preamble, a body without its boundary, a part file that could not be written) reach the audit trail and
the client in their exact words; the warning line counts the refusals per status; a sender is told that it
may use only /dicomweb.
"""

from __future__ import annotations

import json
import logging
import resource
import signal
from collections.abc import Iterator
from hashlib import sha256
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Instance
from dicomnode.net.multipart import encode_related
from dicomnode.settings import Settings
from tests.conftest import make_settings
from tests.integration.test_dicomweb import USERS, _part10, _post
from tests.support.admin import admin_server, call, login
from tests.support.net import free_port
from tests.support.synthetic import make_series

OTHER_STUDY = "1.2.826.0.1.3680043.8.498.1"
SHORT_REASON = "not a readable DICOM Part-10 instance: shorter than its preamble"


@pytest.fixture
def stow(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[tuple[str, Settings]]:
    configured = make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=USERS)
    with admin_server(configured, sessions) as url:
        yield url, configured


def _series(n: int, rows: int = 16, columns: int = 12) -> list[Dataset]:
    return make_series(n_slices=n, rows=rows, columns=columns, patient_name="STOW^DETAIL", patient_id="STOW-1")


def _store(url: str, parts: list[bytes], study_uid: str | None = None) -> tuple[int, Dataset]:
    """A sender's STOW-RS of ``parts`` (into ``study_uid`` when given): the HTTP status and the response."""
    path = "/dicomweb/studies" + (f"/{study_uid}" if study_uid else "")
    status, answer = _post(url, login(url, "edge-a", "sender-pass"), *encode_related(parts), path)
    return status, Dataset.from_json(json.dumps(answer))


def _refusals(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """The ``instance_refused`` audit rows, oldest first: each one's detail, and its study as ``row_study``."""
    with sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == "instance_refused")
                               .order_by(AuditRecord.id))
        return [{**json.loads(row.detail), "row_study": row.study_uid} for row in rows]


def test_a_part_whose_preamble_begins_like_file_meta_is_stored_as_sent(
    stow: tuple[str, Settings], sessions: sessionmaker[Session]
) -> None:
    """A part with its preamble and DICM is stored byte for byte, whatever its preamble holds (PS3.10 7.1)."""
    url, _ = stow
    (ds,) = _series(1)
    part = b"\x02\x00" + _part10(ds)[2:]  # a preamble that begins as a File Meta element's tag would
    assert part[128:132] == b"DICM"
    status, answer = _store(url, [part])
    assert status == 200, answer
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [str(ds.SOPInstanceUID)]
    with sessions() as session:
        (stored,) = session.scalars(select(Instance))
        assert (stored.sop_instance_uid, stored.sha256) == (str(ds.SOPInstanceUID), sha256(part).hexdigest())


def test_a_stored_instance_is_referenced_with_its_own_retrieve_url(stow: tuple[str, Settings]) -> None:
    """Each stored instance's ReferencedSOPSequence item names its class, UID and study/series/instance URL."""
    url, _ = stow
    series = _series(2)
    status, answer = _store(url, [_part10(ds) for ds in series])
    assert status == 200, answer
    assert [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), str(i.RetrieveURL))
            for i in answer.ReferencedSOPSequence] == [
        (str(MRImageStorage), str(ds.SOPInstanceUID), f"{url}/dicomweb/studies/{ds.StudyInstanceUID}"
         f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}") for ds in series]


def test_a_refused_part_is_listed_with_its_own_uids_and_audited_with_its_reason(
    stow: tuple[str, Settings], sessions: sessionmaker[Session]
) -> None:
    """A part of another study than the URL's is in FailedSOPSequence under its own UIDs, audited with why."""
    url, _ = stow
    good, other = _series(2)
    other.StudyInstanceUID = OTHER_STUDY
    status, answer = _store(url, [_part10(good), _part10(other)], str(good.StudyInstanceUID))
    assert status == 202, answer
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [str(good.SOPInstanceUID)]
    assert [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason), "RetrieveURL" in i)
            for i in answer.FailedSOPSequence] == [(str(MRImageStorage), str(other.SOPInstanceUID), 0xC212, False)]
    assert [(d["status"], d["reason"], d["row_study"], d["transport"]) for d in _refusals(sessions)] == [
        ("0xC212", "the instance is not of the study named in the STOW-RS URL", OTHER_STUDY, "STOW-RS")]


def test_a_part_refused_while_it_arrives_is_listed_with_its_own_uids(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A part that grows past max_instance_mb is dropped as it arrives, and its entry in FailedSOPSequence
    still names it (read from what of it was written: its header comes first), so that the sender knows
    which instance to send elsewhere; a part whose header never arrived is listed with empty UIDs."""
    configured = make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=USERS,
                               max_instance_mb=1)
    (small,) = _series(1)
    (big,) = _series(1, rows=800, columns=800)  # 1.28 MB of pixel data over a 1 MiB limit
    too_long_to_be_a_header = bytes(2**20 + 1)
    with admin_server(configured, sessions) as url:
        status, answer = _store(url, [_part10(small), _part10(big), too_long_to_be_a_header])
    assert status == 202, answer
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [str(small.SOPInstanceUID)]
    assert [(str(i.get("ReferencedSOPClassUID", "")), str(i.get("ReferencedSOPInstanceUID", "")),
             int(i.FailureReason)) for i in answer.FailedSOPSequence] == [
        (str(MRImageStorage), str(big.SOPInstanceUID), 0xA700), ("", "", 0xA700)]
    assert [(d["status"], d["reason"]) for d in _refusals(sessions)] == [
        ("0xA700", "instance of 1 MiB larger than max_instance_mb=1")]  # one burst: the second is counted


def test_the_warning_line_counts_the_refusals_per_status(stow: tuple[str, Settings],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """IT staff read one warning per request naming how many of how many parts were refused, per status."""
    url, _ = stow
    good, other = _series(2)
    other.StudyInstanceUID = OTHER_STUDY
    with caplog.at_level(logging.WARNING, logger="dicomnode.dicomweb.stow"):
        status, _ = _store(url, [b"x", _part10(good), _part10(other), b"y"], str(good.StudyInstanceUID))
    assert status == 202
    assert [r.getMessage() for r in caplog.records if r.name == "dicomnode.dicomweb.stow"] == [
        "STOW-RS: 3 of 4 instances refused (0xC210 x2, 0xC212 x1)"]


def test_a_part_shorter_than_a_preamble_is_refused_as_no_part10_file(
    stow: tuple[str, Settings], sessions: sessionmaker[Session]
) -> None:
    """A part too short to hold a preamble is answered 0xC210 and audited as no readable Part-10 instance."""
    url, _ = stow
    status, answer = _store(url, [b"not dicom"])
    assert status == 409, answer
    assert [int(i.FailureReason) for i in answer.FailedSOPSequence] == [0xC210]
    assert [(d["status"], d["reason"], d["transport"]) for d in _refusals(sessions)] == [
        ("0xC210", SHORT_REASON, "STOW-RS")]


def test_a_body_that_never_contains_its_boundary_is_refused_with_that_reason(
    stow: tuple[str, Settings], sessions: sessionmaker[Session]
) -> None:
    """A multipart body without its boundary anywhere is a 400 that says so, to the client and the audit trail."""
    url, _ = stow
    token = login(url, "edge-a", "sender-pass")
    status, answer = _post(url, token, b"\r\n".join([b"only a preamble"] * 50),
                           'multipart/related; type="application/dicom"; boundary=never-sent')
    assert (status, answer) == (400, {"detail": "the body does not contain its boundary; nothing was stored"})
    assert [(d["status"], d["reason"], d["transport"]) for d in _refusals(sessions)] == [
        ("HTTP 400", "STOW-RS request refused: the body does not contain its boundary", "STOW-RS")]


def test_a_sender_is_told_it_may_use_only_dicomweb(stow: tuple[str, Settings]) -> None:
    """The sender role's call of the admin API is a 403 whose detail names where it may go."""
    url, _ = stow
    token = login(url, "edge-a", "sender-pass")
    assert call(url, "GET", "/api/studies", token=token) == (403, {"detail": "the sender role may use only /dicomweb"})


def test_a_part_whose_last_bytes_cannot_be_written_is_refused_for_lack_of_room(
    stow: tuple[str, Settings], sessions: sessionmaker[Session]
) -> None:
    """A part whose file fails as it is closed (its last buffered bytes not written) is 0xA700, audited why."""
    url, configured = stow
    (ds,) = _series(1, rows=2048, columns=2048)
    part = _part10(ds)  # 8 MiB: larger than the database and its WAL, which must stay writable meanwhile
    databases = [p.stat().st_size for p in configured.data_dir.glob("dicomnode.db*") if p.is_file()]
    assert databases and max(databases) < len(part) // 2
    token = login(url, "edge-a", "sender-pass")
    # every file of this process may hold one byte less than the part: the part's file gets all but its last
    # byte written as it arrives, and the last is refused (EFBIG, as ENOSPC on a full disk) when it is closed
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the failed write's signal (CPython ignores it too)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(part) - 1, hard))
    try:
        status, answer = _post(url, token, *encode_related([part]))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert status == 409, answer
    assert [int(i.FailureReason) for i in Dataset.from_json(json.dumps(answer)).FailedSOPSequence] == [0xA700]
    assert [(d["status"], d["reason"]) for d in _refusals(sessions)] == [
        ("0xA700", "could not write spool file: File too large")]
    with sessions() as session:
        assert list(session.scalars(select(Instance))) == []
    assert [p for p in configured.spool_dir.rglob("*") if p.is_file()] == []
