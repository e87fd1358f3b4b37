"""Whole or refused (issue 23): an instance is acknowledged only when it is whole and parses strictly in the
transfer syntax it came in, on both transports and both C-STORE engines.

A 0x0000 tells the PACS it may forget the instance. Pixel data shorter than its attributes say (cut short in
the element, or an element that declares less), encapsulated pixel data missing a fragment, part of one or its
sequence delimiter, and a body encoded in the other VR encoding than the one negotiated (pydicom would switch
and read it anyway) are each answered 0xC210, audited, and leave no row and no file. The lies are sent as raw
PDUs (:mod:`tests.support.rawdicom`: storescu sends no lie) and as STOW-RS parts over a real socket; the same
instances told truthfully are stored.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.auth import hash_password
from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Instance
from dicomnode.log import lenient_reading, setup_logging
from dicomnode.net.multipart import encode_related
from dicomnode.receive.dataphase import early
from dicomnode.receive.dataphase.native import _file_meta
from dicomnode.settings import AdminUser, Settings
from dicomnode.store.validity import file_refusal
from tests.conftest import make_settings
from tests.integration.conftest import StartScp
from tests.support.admin import admin_server, call, login
from tests.support.net import free_port, wait_for
from tests.support.rawdicom import store
from tests.support.synthetic import make_series

MR = str(MRImageStorage)
CANNOT_DECODE = 0xC210
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
FRAGMENT = b"\x5a" * 40_000  # a frame's compressed bytes (never decoded, only counted): past the early prefix
# as the node runs (dicomnode.log.setup_logging): pydicom's warnings ("Expected explicit VR, but found implicit
# VR", "End of file reached before delimiter") are kept out of the logs, never raised; here too, so that it is
# the node that refuses, not a warning turned into an error that the node would never see
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@dataclass(frozen=True)
class Sent:
    """An instance as sent: its UID, the transfer syntax it is said to be in, and its dataset's bytes."""

    uid: str
    transfer_syntax: str
    body: bytes


def _image(rows: int, columns: int, **attributes: object) -> Dataset:
    ds = make_series(n_slices=1, rows=rows, columns=columns)[0]
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _body(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, Dataset(ds), implicit_vr=implicit, little_endian=little)
    return buffer.getvalue()


def _native(rows: int, columns: int, *, carried: int | None = None, declared: int | None = None,
            implicit: bool = False) -> Sent:
    """A 16-bit image of ``rows`` x ``columns`` whose Pixel Data element declares ``declared`` bytes (default:
    what the attributes say) and carries ``carried`` of them (default: all it declares)."""
    ds = _image(rows, columns)
    ds.PixelData = bytes(declared if declared is not None else rows * columns * 2)
    body = _body(ds, implicit=implicit)
    if carried is not None:
        body = body[:len(body) - len(ds.PixelData) + carried]
    return Sent(str(ds.SOPInstanceUID), ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian, body)


def _item(value: bytes) -> bytes:
    return struct.pack("<HHL", *_ITEM, len(value)) + value


def _encapsulated(frames: int = 3, *, offsets: bool = True, cut: Callable[[bytes, list[int]], bytes] | None = None
                  ) -> Sent:
    """An RLE Lossless multi-frame instance, one fragment per frame, with a Basic Offset Table (empty unless
    ``offsets``); ``cut(body, starts)`` lies about it, ``starts`` being where each fragment item begins."""
    ds = _image(8, 8, NumberOfFrames=frames)
    del ds.PixelData
    header = _body(ds)  # every element but the pixel data, which comes last
    items = [_item(FRAGMENT) for _ in range(frames)]
    table = b"".join(struct.pack("<L", k * len(items[0])) for k in range(frames)) if offsets else b""
    pixel = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + _item(table)
    first = len(header) + len(pixel)
    body = header + pixel + b"".join(items) + struct.pack("<HHL", *_SEQUENCE_END, 0)
    starts = [first + k * len(items[0]) for k in range(frames)]
    return Sent(str(ds.SOPInstanceUID), str(RLELossless), body if cut is None else cut(body, starts))


def _big_endian() -> Sent:
    ds = _image(64, 64)
    return Sent(str(ds.SOPInstanceUID), ExplicitVRBigEndian, _body(ds, little=False))


def _deflated() -> Sent:
    ds = _image(64, 64)
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return Sent(str(ds.SOPInstanceUID), DeflatedExplicitVRLittleEndian,
                      deflater.compress(_body(ds)) + deflater.flush())


def _rgb(rows: int, columns: int, *, planes: int = 3) -> Sent:
    """An 8-bit RGB image (Samples per Pixel 3) whose Pixel Data declares and carries ``planes`` of its 3."""
    ds = _image(rows, columns, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0,
                BitsAllocated=8, BitsStored=8, HighBit=7)
    ds.PixelData = bytes(rows * columns * planes)
    return Sent(str(ds.SOPInstanceUID), ExplicitVRLittleEndian, _body(ds))


def _undefined_lengths(*, delimited: bool = True) -> Sent:
    """A 64x64 image whose Referenced Image Sequence (before the pixel data) and its item are of undefined
    length, in explicit VR (PS3.5 7.5.1: each ends in its delimiter; without ``delimited``, the item's is
    missing, so the item runs on into the sequence delimiter)."""
    ds = _image(64, 64)
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, generate_uid()
    item.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = [item]
    ds["ReferencedImageSequence"].is_undefined_length = True
    body = _body(ds)
    if not delimited:
        body = body.replace(struct.pack("<HHL", *_ITEM_END, 0), b"", 1)
    return Sent(str(ds.SOPInstanceUID), ExplicitVRLittleEndian, body)


def _odd_8bit() -> Sent:
    ds = _image(5, 5, BitsAllocated=8, BitsStored=8, HighBit=7)
    ds.PixelData = bytes(26)  # 25 bytes, padded to even
    return Sent(str(ds.SOPInstanceUID), ExplicitVRLittleEndian, _body(ds))


LIES: dict[str, tuple[Callable[[], Sent], str]] = {  # each lie, and the refusal's reason
    "native pixel data declares 8192 bytes and carries 5192": (
        lambda: _native(64, 64, carried=5192), "the pixel data cut short: its length says 8192 bytes, 5192 follow"),
    "512x512 image cut 200,000 bytes short": (
        lambda: _native(512, 512, carried=512 * 512 * 2 - 200_000),
        "the pixel data cut short: its length says 524288 bytes, 324288 follow"),
    "512x512 image whose pixel data declares 200,000 bytes too few": (lambda: _native(
        512, 512, declared=512 * 512 * 2 - 200_000), "pixel data of 324288 bytes; its attributes say 524288"),
    "RGB image carrying one sample of its three": (
        lambda: _rgb(64, 64, planes=1), "pixel data of 4096 bytes; its attributes say 12288"),
    "encapsulated: a fragment cut short": (
        lambda: _encapsulated(cut=lambda body, starts: body[:-8 - 400]),
        "a pixel data fragment cut short: its length says 40000 bytes, 39600 follow"),
    "encapsulated: the last fragment missing": (
        lambda: _encapsulated(cut=lambda body, starts: body[:starts[-1]] + body[-8:]),
        "encapsulated pixel data of 2 fragments for 3 frames"),
    "encapsulated: the last fragment missing, no offset table": (
        lambda: _encapsulated(offsets=False, cut=lambda body, starts: body[:starts[-1]] + body[-8:]),
        "encapsulated pixel data of 2 fragments for 3 frames"),
    "encapsulated: no sequence delimiter": (
        lambda: _encapsulated(cut=lambda body, starts: body[:-8]),
        "encapsulated pixel data without its sequence delimiter"),
    "encapsulated: an item delimiter among the fragments": (lambda: _encapsulated(
        cut=lambda body, starts: body[:starts[1]] + struct.pack("<HH", *_ITEM_END) + body[starts[1] + 4:]),
        "encapsulated pixel data holding something other than fragment items"),
    "implicit VR body on an explicit VR context": (lambda: Sent(
        (lie := _native(256, 256, implicit=True)).uid, ExplicitVRLittleEndian, lie.body),
        "the dataset is encoded in implicit VR; its transfer syntax says explicit VR"),
    "explicit VR body on an implicit VR context": (lambda: Sent(
        (lie := _native(256, 256)).uid, ImplicitVRLittleEndian, lie.body),
        "the dataset is encoded in explicit VR; its transfer syntax says implicit VR"),
    "an explicit VR item of undefined length without its item delimiter": (
        lambda: _undefined_lengths(delimited=False), "an item or delimiter where an element belongs"),
    "a sequence after the pixel data that the dataset ends inside": (lambda: _trailing(_CREATOR, _element(
        0x7FE1, 0x1001, b"SQ", _EXPLICIT_ITEM, undefined=True))(), "a sequence cut short (no sequence delimiter)"),
}
TRUTHS: dict[str, Callable[[], Sent]] = {
    "native, explicit VR": lambda: _native(64, 64),
    "native 512x512, explicit VR": lambda: _native(512, 512),
    "native, implicit VR": lambda: _native(64, 64, implicit=True),
    "odd-sized 8-bit native, padded to even": _odd_8bit,
    "RGB, three samples a pixel": lambda: _rgb(64, 64),
    "explicit VR big endian": _big_endian,
    "deflated explicit VR little endian": _deflated,
    "encapsulated with offsets": _encapsulated,
    "encapsulated without offsets": lambda: _encapsulated(offsets=False),
    "explicit VR, a sequence and its item of undefined length": _undefined_lengths,
}


def _kept(sessions: sessionmaker[Session], settings: Settings) -> tuple[int, list[str]]:
    """Instance rows, and the files in the spool (the incoming folder's included)."""
    with sessions() as session:
        rows = int(session.scalar(select(func.count()).select_from(Instance)) or 0)
    files = [str(p) for p in settings.spool_dir.rglob("*") if p.is_file()] if settings.spool_dir.exists() else []
    return rows, files


def _refusals(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    """The audited refusals: status and reason."""
    with sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == "instance_refused"))
        return [(detail["status"], detail["reason"]) for detail in (json.loads(row.detail) for row in rows)]


def _assert_refused_and_forgotten(sessions: sessionmaker[Session], settings: Settings, fault: str) -> None:
    """Nothing kept, and one refusal audited: 0xC210, for the reason ``fault``."""
    wait_for(lambda: _kept(sessions, settings) == (0, []), timeout=30, msg="no row and no file kept")
    wait_for(lambda: len(_refusals(sessions)) == 1, timeout=30, msg="one refusal audited")
    [(status, reason)] = _refusals(sessions)
    assert (status, reason) == ("0xC210", fault)


@pytest.mark.parametrize("engine", ["native", "pynetdicom"])
@pytest.mark.parametrize("case", list(LIES))
def test_c_store_of_an_instance_that_is_not_whole_or_not_in_its_encoding_is_refused(
    start_scp_with: StartScp, sessions: sessionmaker[Session], engine: str, case: str
) -> None:
    scp = start_scp_with(receive_engine=engine)
    make, fault = LIES[case]
    lie = make()
    answered = store(scp.port, MR, lie.uid, lie.body, transfer_syntax=lie.transfer_syntax)
    assert answered == CANNOT_DECODE
    _assert_refused_and_forgotten(sessions, scp.settings, fault)


@pytest.mark.parametrize("engine", ["native", "pynetdicom"])
def test_c_store_of_whole_instances_is_acknowledged(start_scp_with: StartScp, sessions: sessionmaker[Session],
                                                     engine: str) -> None:
    scp = start_scp_with(receive_engine=engine)
    for case, make in TRUTHS.items():
        truth = make()
        answered = store(scp.port, MR, truth.uid, truth.body, transfer_syntax=truth.transfer_syntax)
        assert answered == 0, case
    assert _kept(sessions, scp.settings)[0] == len(TRUTHS)
    assert _refusals(sessions) == []


USERS = [AdminUser(name="edge-a", password_hash=hash_password("sender-pass", 1000), role="sender")]


@pytest.fixture
def stow(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[tuple[str, Settings]]:
    configured = make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=USERS)
    with admin_server(configured, sessions) as url:
        yield url, configured


def _part10(instance: Sent) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR
    meta.MediaStorageSOPInstanceUID = instance.uid
    meta.TransferSyntaxUID = instance.transfer_syntax
    buffer = BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue() + instance.body


def _post(url: str, parts: list[bytes]) -> tuple[int, Dataset]:
    body, content_type = encode_related(parts)
    status, answer = call(url, "POST", "/dicomweb/studies", token=login(url, "edge-a", "sender-pass"), raw=body,
                          headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    return status, Dataset.from_json(json.dumps(answer))


@pytest.mark.parametrize("case", list(LIES))
def test_stow_of_an_instance_that_is_not_whole_or_not_in_its_encoding_is_refused(
    stow: tuple[str, Settings], sessions: sessionmaker[Session], case: str
) -> None:
    url, configured = stow
    make, fault = LIES[case]
    status, answer = _post(url, [_part10(make())])
    assert status == 409
    assert [int(item.FailureReason) for item in answer.FailedSOPSequence] == [CANNOT_DECODE]
    _assert_refused_and_forgotten(sessions, configured, fault)


def test_stow_of_a_part_whose_file_meta_names_no_transfer_syntax_is_refused(
    stow: tuple[str, Settings], sessions: sessionmaker[Session]
) -> None:
    """A part's transfer syntax is its file meta's (PS3.18 10.5): without one, its dataset cannot be read."""
    url, configured = stow
    whole = _part10(_native(64, 64))
    meta_end = 132 + 12 + struct.unpack("<L", whole[140:144])[0]  # preamble, DICM, the group length element
    transfer_syntax = whole.index(struct.pack("<HH2s", 0x0002, 0x0010, b"UI"), 132, meta_end)
    syntax_length = 8 + struct.unpack("<H", whole[transfer_syntax + 6:transfer_syntax + 8])[0]
    group_length = struct.pack("<L", meta_end - 144 - syntax_length)
    part = whole[:140] + group_length + whole[144:transfer_syntax] + whole[transfer_syntax + syntax_length:]
    status, answer = _post(url, [part])
    assert status == 409
    assert [int(item.FailureReason) for item in answer.FailedSOPSequence] == [CANNOT_DECODE]
    _assert_refused_and_forgotten(sessions, configured,
                                  "no File Meta Information with a Transfer Syntax UID (PS3.10 7.1)")


def test_stow_of_whole_instances_is_acknowledged(stow: tuple[str, Settings], sessions: sessionmaker[Session]) -> None:
    url, configured = stow
    status, answer = _post(url, [_part10(make()) for make in TRUTHS.values()])
    assert status == 200, answer
    assert _kept(sessions, configured)[0] == len(TRUTHS)


def _file(folder: Path, sent: Sent) -> tuple[bytes, Path]:
    """The file the node's data phase writes for ``sent``: its file meta, and its path."""
    meta = _file_meta(MR, sent.uid, sent.transfer_syntax)
    path = folder / f"{sent.uid}.dcm"
    path.write_bytes(meta + sent.body)
    return meta, path


def test_the_check_from_the_pixel_data_on_gives_the_whole_files_verdict(tmp_path: Path) -> None:
    """The native data phase walks the header while the dataset arrives and judges the rest from the pixel
    data on (:func:`dicomnode.receive.dataphase.early.refusal`): the verdict of the whole file's walk."""
    judged_early = []
    for case, make in {**{lie: make for lie, (make, _) in LIES.items()}, **TRUTHS}.items():
        sent = make()
        meta, path = _file(tmp_path, sent)
        whole = file_refusal(path, sent.transfer_syntax, inflated_limit=2**30)
        assert (whole is None) == (case in TRUTHS), (case, whole)
        if early.eligible(sent.transfer_syntax) and len(sent.body) >= early.PREFIX_BYTES:
            parsed = early.parse_prefix(meta, bytearray(sent.body[:early.PREFIX_BYTES]), sent.transfer_syntax)
            assert parsed is not None, case
            assert early.refusal(path, parsed, len(meta) + len(sent.body)) == whole, case
            if parsed.image is not None:  # the header walked: the rest judged from the pixel data on
                judged_early.append(case)
    assert sorted(judged_early) == sorted(case for case in [*LIES, *TRUTHS]
                                          if "512" in case or "encapsulated" in case or "after the pixel" in case)


def _trailing(*elements: bytes) -> Callable[[], Sent]:
    """A 256x256 image followed by ``elements`` (after its pixel data: the early check reads them too)."""
    def make() -> Sent:
        image = _native(256, 256)
        return Sent(image.uid, image.transfer_syntax, image.body + b"".join(elements))
    return make


def _image_with(pixels: bytes, keyword: str = "PixelData", **attributes: object) -> Callable[[], Sent]:
    def make() -> Sent:
        ds = _image(10, 10, **attributes)
        del ds.PixelData
        setattr(ds, keyword, pixels)
        return Sent(str(ds.SOPInstanceUID), ExplicitVRLittleEndian, _body(ds))
    return make


def _element(group: int, element: int, vr: bytes, value: bytes, *, undefined: bool = False) -> bytes:
    length = 0xFFFFFFFF if undefined else len(value)
    if vr in (b"OB", b"UN", b"SQ"):
        return struct.pack("<HH2sHL", group, element, vr, 0, length) + value
    return struct.pack("<HH2sH", group, element, vr, length) + value


_IMPLICIT_ITEM = (struct.pack("<HHL", *_ITEM, 0xFFFFFFFF) + struct.pack("<HHL", 0x0008, 0x0100, 6) + b"121311"
                  + struct.pack("<HHL", 0xFFFE, 0xE00D, 0))
_CREATOR = _element(0x7FE1, 0x0010, b"LO", b"DICOMNODE TEST")
_EXPLICIT_CODE = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 6) + b"121311"
_EXPLICIT_ITEM = (struct.pack("<HHL", *_ITEM, 0xFFFFFFFF) + _EXPLICIT_CODE + struct.pack("<HHL", *_ITEM_END, 0))


def _explicit_item(length: int) -> bytes:
    """An item of defined ``length`` holding one explicit VR element (14 bytes)."""
    return struct.pack("<HHL", *_ITEM, length) + _EXPLICIT_CODE


EDGES: dict[str, tuple[Callable[[], Sent], int | None]] = {
    "1-bit pixels, packed and padded": (_image_with(bytes(14), BitsAllocated=1, BitsStored=1, HighBit=0), None),
    "1-bit pixels, a byte short": (_image_with(bytes(12), BitsAllocated=1, BitsStored=1, HighBit=0), CANNOT_DECODE),
    "Float Pixel Data": (_image_with(bytes(400), "FloatPixelData", BitsAllocated=32), None),
    "Float Pixel Data, a value short": (_image_with(bytes(396), "FloatPixelData", BitsAllocated=32), CANNOT_DECODE),
    "YBR_FULL_422, chroma subsampled": (_image_with(bytes(200), SamplesPerPixel=3, BitsAllocated=8, BitsStored=8,
                                                    HighBit=7, PhotometricInterpretation="YBR_FULL_422",
                                                    PlanarConfiguration=0), None),
    "two frames declared, one sent": (_image_with(bytes(200), NumberOfFrames=2), CANNOT_DECODE),
    "pixel data no Rows describe": (_image_with(bytes(200), Rows=None), 0xA900),
    "trailing padding after the pixel data": (_trailing(_element(0xFFFC, 0xFFFC, b"OB", bytes(16))), None),
    "a UN sequence of implicit VR items (PS3.5 6.2.2)": (_trailing(_CREATOR, _element(
        0x7FE1, 0x1001, b"UN", _IMPLICIT_ITEM + struct.pack("<HHL", *_SEQUENCE_END, 0), undefined=True)), None),
    "a UN sequence without its delimiter": (_trailing(_CREATOR, _element(
        0x7FE1, 0x1001, b"UN", _IMPLICIT_ITEM, undefined=True)), CANNOT_DECODE),
    "an implicit VR item in an explicit VR sequence": (_trailing(_CREATOR, _element(
        0x7FE1, 0x1001, b"SQ", _IMPLICIT_ITEM + struct.pack("<HHL", *_SEQUENCE_END, 0), undefined=True)),
        CANNOT_DECODE),
    "an explicit VR sequence of defined length": (_trailing(_CREATOR, _element(
        0x7FE1, 0x1001, b"SQ", _explicit_item(len(_EXPLICIT_CODE)))), None),
    "an item that runs past its defined-length sequence": (_trailing(_CREATOR, _element(
        0x7FE1, 0x1001, b"SQ", _explicit_item(len(_EXPLICIT_CODE) + 26))), CANNOT_DECODE),
    "an explicit VR sequence of an undefined-length item": (_trailing(_CREATOR, _element(
        0x7FE1, 0x1001, b"SQ", _EXPLICIT_ITEM + struct.pack("<HHL", *_SEQUENCE_END, 0), undefined=True)), None),
    "an explicit VR undefined-length item without its delimiter": (_trailing(_CREATOR, _element(
        0x7FE1, 0x1001, b"SQ", _EXPLICIT_ITEM[:-8] + struct.pack("<HHL", *_SEQUENCE_END, 0), undefined=True)),
        CANNOT_DECODE),
    "an undefined length on a value": (_trailing(_CREATOR, _element(
        0x7FE1, 0x1001, b"OB", struct.pack("<HHL", *_SEQUENCE_END, 0), undefined=True)), CANNOT_DECODE),
    "a Basic Offset Table that points between fragments": (lambda: _encapsulated(
        cut=lambda body, starts: body.replace(struct.pack("<L", len(FRAGMENT) + 8), struct.pack("<L", 12), 1)),
        CANNOT_DECODE),
}

# each refusal says what is wrong, in the words the audit row and the sender's error comment carry
EDGE_REASONS = {
    "1-bit pixels, a byte short": "pixel data of 12 bytes; its attributes say 14",
    "Float Pixel Data, a value short": "pixel data of 396 bytes; its attributes say 400",
    "two frames declared, one sent": "pixel data of 200 bytes; its attributes say 400",
    "pixel data no Rows describe": "pixel data without the Rows, Columns and Bits Allocated that describe it",
    "a UN sequence without its delimiter": "a sequence cut short (no sequence delimiter)",
    "an implicit VR item in an explicit VR sequence":
        "an element whose VR is none (pydicom would switch to implicit VR, or guess its length)",
    "an item that runs past its defined-length sequence": "an item cut short: its length says 40 bytes, 14 follow",
    "an explicit VR undefined-length item without its delimiter": "an item or delimiter where an element belongs",
    "an undefined length on a value":
        "an undefined length on an element that is neither a sequence nor encapsulated pixel data",
    "a Basic Offset Table that points between fragments":
        "the Basic Offset Table does not point at the frames' fragments",
}

@pytest.mark.parametrize("case", list(EDGES))
def test_the_check_reads_pixel_data_and_sequences_as_ps3_5_says(tmp_path: Path, case: str) -> None:
    make, expected = EDGES[case]
    sent = make()
    meta, path = _file(tmp_path, sent)
    refused = file_refusal(path, sent.transfer_syntax, inflated_limit=2**30)
    assert (None if refused is None else refused.status) == expected, refused
    assert (None if refused is None else refused.reason) == EDGE_REASONS.get(case)
    if len(sent.body) >= early.PREFIX_BYTES:
        parsed = early.parse_prefix(meta, bytearray(sent.body[:early.PREFIX_BYTES]), sent.transfer_syntax)
        assert parsed is not None and parsed.image is not None
        assert early.refusal(path, parsed, len(meta) + len(sent.body)) == refused


def test_a_deflated_dataset_may_inflate_to_exactly_the_limit(tmp_path: Path) -> None:
    """``max_inflated_mb`` is the most a dataset may inflate to: that many bytes are walked, one more refused."""
    sent = _deflated()
    _, path = _file(tmp_path, sent)
    inflated = len(zlib.decompress(sent.body, -zlib.MAX_WBITS))
    assert file_refusal(path, sent.transfer_syntax, inflated_limit=inflated) is None
    refused = file_refusal(path, sent.transfer_syntax, inflated_limit=inflated - 1)
    assert refused is not None and refused.status == 0xA700, refused


def test_lenient_reading_is_scoped_to_its_readers_never_set_for_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom's reading mode is process-wide: the node leaves it alone (setup_logging sets nothing), and
    :func:`~dicomnode.log.lenient_reading` restores it only once the last of overlapping readers leaves."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.WARN)
    setup_logging("INFO")
    assert pydicom_config.settings.reading_validation_mode == pydicom_config.WARN
    first, second = lenient_reading(), lenient_reading()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert pydicom_config.settings.reading_validation_mode == pydicom_config.IGNORE  # the second still reads
    second.__exit__(None, None, None)
    assert pydicom_config.settings.reading_validation_mode == pydicom_config.WARN


@pytest.mark.parametrize(("case", "reason"), [
    ("not deflate at all", "the deflated dataset does not inflate"),
    ("cut short", "the deflated dataset is cut short"),
])
def test_a_deflated_dataset_that_does_not_inflate_whole_is_refused(tmp_path: Path, case: str, reason: str) -> None:
    """Deflated Explicit VR Little Endian (PS3.5 A.5) whose bytes are no raw deflate stream, or one that
    ends before its last block: 0xC210, saying which."""
    sent = _deflated()
    body = b"\xff" * 64 if case == "not deflate at all" else sent.body[: len(sent.body) // 2]
    _, path = _file(tmp_path, Sent(sent.uid, sent.transfer_syntax, body))
    refused = file_refusal(path, sent.transfer_syntax, inflated_limit=2**30)
    assert refused is not None and (refused.status, refused.reason) == (0xC210, reason)


def test_an_item_that_ends_inside_an_element_s_header_is_refused_saying_so(tmp_path: Path) -> None:
    """An item whose length ends 8 bytes into a 12-byte (OB) element header: 0xC210, the element cut short
    inside its header -- not read on past the item's end into the bytes that follow it."""
    ds = _image(8, 8)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    item.add_new(0x00420011, "OB", b"\x00\x01")  # Encapsulated Document: an explicit VR long form header
    ds.ReferencedImageSequence = [item]
    ds["ReferencedImageSequence"].is_undefined_length = True
    body = _body(ds)
    whole = 8 + 6 + 12 + 2  # the UI element (header and "1.2.3" padded), the OB element (header and value)
    header = b"\xfe\xff\x00\xe0" + struct.pack("<I", whole)
    assert body.count(header) == 1
    body = body.replace(header, b"\xfe\xff\x00\xe0" + struct.pack("<I", 8 + 6 + 8))  # ends inside the OB header
    _, path = _file(tmp_path, Sent(str(ds.SOPInstanceUID), ExplicitVRLittleEndian, body))
    refused = file_refusal(path, ExplicitVRLittleEndian, inflated_limit=2**30)
    assert refused is not None and (refused.status, refused.reason) == (
        0xC210, "an element cut short (the dataset ends inside its header)")


def test_a_sequence_delimiter_with_a_length_is_refused(tmp_path: Path) -> None:
    """PS3.5 7.5: the Sequence Delimitation Item's length is 0; one with a length (and those bytes after it)
    is not the encoding pydicom or any reader agrees on: 0xC210, saying so."""
    ds = _image(8, 8)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = [item]
    ds["ReferencedImageSequence"].is_undefined_length = True
    body = _body(ds)
    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert body.count(delimiter) == 1
    body = body.replace(delimiter, b"\xfe\xff\xdd\xe0\x04\x00\x00\x00" + bytes(4))
    _, path = _file(tmp_path, Sent(str(ds.SOPInstanceUID), ExplicitVRLittleEndian, body))
    refused = file_refusal(path, ExplicitVRLittleEndian, inflated_limit=2**30)
    assert refused is not None and (refused.status, refused.reason) == (0xC210, "a sequence delimiter with a length")
