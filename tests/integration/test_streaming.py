"""Receiving costs a few MB whatever the size: the node, as a real process (``python -m dicomnode serve``),
takes a chunked STOW-RS body of hundreds of MiB, and a deflated instance that inflates to 496 MiB by
STOW-RS and by C-STORE, with its peak RSS (VmHWM, reset once the node is warm) less than 64 MiB above
its RSS before; every instance is stored whole (row, file and SHA-256 agree with what was sent).

The node runs its receiving roles only: the admin app (STOW-RS) and the receiver (C-STORE). Its worker
(``start_worker = false``), which loads models in its own time, and the completeness sweep (studies stay
receiving: ``study_idle_seconds``), which reads the headers of quiet studies, are not receiving, and would
make the figures depend on when they ran.

The bodies are generated while they are sent (requests streams a generator as a chunked body); the
deflated instance is 0.5 MB on the wire. C-STORE goes through raw PDUs (tests/support/rawdicom.py), so
that the deflated bytes the node keeps are exactly the ones sent.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from dicomnode.admin.auth import hash_password
from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.dicomweb.stow import Arrived, PartFiles
from dicomnode.jobs.models import Instance
from dicomnode.net.multipart import RelatedReader
from dicomnode.settings import Settings
from tests.conftest import make_settings
from tests.support.admin import login
from tests.support.net import free_port, port_open, wait_for
from tests.support.peers import NodeProcess
from tests.support.rawdicom import COMMAND, LAST, RawAssociation, c_store_rq, fragments, p_data, pdv, status
from tests.support.synthetic import make_series

MiB = 2**20
GROWTH_LIMIT_KB = 64 * 1024  # the node's peak RSS may grow by less than 64 MiB
FRAME = 512 * 512 * 2  # one 16-bit 512 x 512 frame
INFLATED_FRAMES = 992  # 496 MiB of pixel data once inflated: under max_inflated_mb (512)
PASSWORD = "stream-pass"


@dataclass
class Node:
    process: NodeProcess
    base: str
    token: str
    settings: Settings

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("streaming")
    admin_port = free_port()
    users = [{"name": "edge", "password_hash": hash_password(PASSWORD, 1000), "role": "sender"}]
    process = NodeProcess(folder, env={
        "DICOMNODE_ADMIN_PORT": str(admin_port), "DICOMNODE_ADMIN_USERS": json.dumps(users),
        "DICOMNODE_PEERS": "PYSCU@127.0.0.1:104", "DICOMNODE_MIN_FREE_DISK_MB": "1",
        "DICOMNODE_STUDY_IDLE_SECONDS": "3600", "DICOMNODE_START_WORKER": "false",
    }).start()
    try:
        wait_for(lambda: port_open(admin_port), timeout=60, msg="admin port")
        base = f"http://127.0.0.1:{admin_port}"
        settings = Settings.load(None, data_dir=process.data_dir)
        yield Node(process, base, login(base, "edge", PASSWORD), settings)
    finally:
        process.stop()


# -- the node's memory -----------------------------------------------------------------------------------
def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _warm(pid: int) -> int:
    """Reset the node's peak RSS to its RSS now (``clear_refs`` 5, Linux 4.0) and return it (kB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS")


def _growth_kb(pid: int, before: int) -> int:
    return _status_kb(pid, "VmHWM") - before


# -- instances, generated while they are sent ------------------------------------------------------------
def _dataset(frames: int) -> Dataset:
    """A 16-bit 512 x 512 multi-frame dataset of ``frames`` frames, without its pixel data yet."""
    (ds,) = make_series(n_slices=1, rows=512, columns=512, study_uid=generate_uid())
    ds.NumberOfFrames = frames
    del ds.PixelData
    return ds


def _head(ds: Dataset, transfer_syntax: str) -> tuple[bytes, bytes]:
    """The preamble and file meta (PS3.10 7.1); and the dataset's elements up to its pixel data element's
    header (explicit VR little endian), that element's value to follow."""
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    meta = BytesIO()
    meta.write(bytes(128) + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    elements = BytesIO()
    dcmwrite(elements, Dataset(ds), implicit_vr=False, little_endian=True)
    pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, int(ds.NumberOfFrames) * FRAME)
    return meta.getvalue(), elements.getvalue() + pixels


def _plain(frames: int, seed: int) -> tuple[Dataset, Iterator[bytes]]:
    """A plain (Explicit VR Little Endian) instance of ``frames`` frames, in pieces of 1 MiB or less."""
    ds = _dataset(frames)
    meta, elements = _head(ds, ExplicitVRLittleEndian)
    block = random.Random(seed).randbytes(MiB)

    def pieces() -> Iterator[bytes]:
        yield meta + elements
        left = frames * FRAME
        while left:
            yield block[:min(left, MiB)]
            left -= min(left, MiB)

    return ds, pieces()


def _deflated(frames: int) -> tuple[Dataset, bytes, bytes]:
    """A Deflated Explicit VR Little Endian instance (PS3.5 A.5) of ``frames`` frames of zeros: its file
    meta, and its deflated dataset (about a thousandth of its size), made without holding it inflated."""
    ds = _dataset(frames)
    meta, elements = _head(ds, DeflatedExplicitVRLittleEndian)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = [packer.compress(elements)]
    zeros = bytes(16 * MiB)
    for _ in range(frames * FRAME // len(zeros)):
        deflated.append(packer.compress(zeros))
    deflated.append(packer.compress(bytes(frames * FRAME % len(zeros))) + packer.flush())
    return ds, meta, b"".join(deflated)


def _body(instances: list[Iterator[bytes]], boundary: str, digests: list[str]) -> Iterator[bytes]:
    """A multipart/related body of ``instances``, generated while it is sent; each part's SHA-256 into
    ``digests`` once it has been."""
    for pieces in instances:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        digest = hashlib.sha256()
        for piece in pieces:
            digest.update(piece)
            yield piece
        digests.append(digest.hexdigest())
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _stow(node: Node, instances: list[Iterator[bytes]]) -> tuple[dict[str, Any], list[str]]:
    boundary = f"stream-{random.getrandbits(64):016x}"
    digests: list[str] = []
    response = requests.post(f"{node.base}/dicomweb/studies", data=_body(instances, boundary, digests), timeout=600,
                             headers={"Authorization": f"Bearer {node.token}", "Accept": "application/dicom+json",
                                      "Content-Type": f'multipart/related; type="application/dicom"; '
                                                      f'boundary="{boundary}"'})
    assert response.status_code == 200, response.text[:500]
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    return response.json(), digests


# -- what the node stored --------------------------------------------------------------------------------
def _stored(node: Node, sop_instance_uid: str) -> Instance:
    engine = make_engine(node.settings.db_url)
    try:
        with make_sessionmaker(engine)() as session:
            row = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))
            assert row is not None, "no row for the instance"
            session.expunge(row)
            return row
    finally:
        engine.dispose()


def _assert_stored(node: Node, ds: Dataset, sha256: str | None, transfer_syntax: str) -> Path:
    """The instance's row names a file in the spool whose SHA-256 and size are the row's (and ``sha256``,
    the SHA-256 of what was sent, where the file is exactly that)."""
    row = _stored(node, str(ds.SOPInstanceUID))
    path = Path(row.path)
    assert path.is_relative_to(node.settings.spool_dir)
    with open(path, "rb") as kept:
        assert hashlib.file_digest(kept, "sha256").hexdigest() == row.sha256 == (sha256 or row.sha256)
    assert path.stat().st_size == row.size
    assert row.transfer_syntax_uid == transfer_syntax
    return path


def _incoming_is_empty(node: Node) -> bool:
    folder = node.settings.spool_dir / ".incoming"
    return not folder.exists() or not [p for p in folder.iterdir() if p.name.startswith("stow-")]


def _c_store(port: int, ds: Dataset, deflated: bytes) -> int | None:
    """One C-STORE of the deflated dataset exactly as given, in PDUs of 16 kB; the status. The node may
    take long over a large instance: the answer is awaited for minutes."""
    assoc = RawAssociation(port, str(ds.SOPClassUID), transfer_syntax=DeflatedExplicitVRLittleEndian, timeout=300)
    assert assoc.accepted
    try:
        assoc.send(p_data([pdv(1, COMMAND | LAST, c_store_rq(str(ds.SOPClassUID), str(ds.SOPInstanceUID)))])
                   + b"".join(p_data([chunk]) for chunk in fragments(1, deflated, 16000)))
        return status(assoc.read_response())
    finally:
        assoc.release()


# -- the tests -------------------------------------------------------------------------------------------
def _warm_up_stow(node: Node) -> None:
    """A small request of each kind first (8 MiB), so that what the node loads or allocates once (modules,
    threads, allocator arenas) is not counted."""
    _stow(node, [_plain(16, seed=0)[1]])
    _, meta, deflated = _deflated(1)
    _stow(node, [iter([meta + deflated])])


@pytest.mark.parametrize("instances", [1, 4], ids=["100MiB", "400MiB"])
def test_a_large_chunked_stow_body_streams_to_files(node: Node, instances: int) -> None:
    _warm_up_stow(node)
    before = _warm(node.pid)
    sent = [_plain(200, seed=n) for n in range(instances)]  # 200 frames: 100 MiB each
    answer, digests = _stow(node, [pieces for _, pieces in sent])
    growth = _growth_kb(node.pid, before)
    assert len(answer["00081199"]["Value"]) == instances  # ReferencedSOPSequence
    for (ds, _), digest in zip(sent, digests, strict=True):
        _assert_stored(node, ds, digest, ExplicitVRLittleEndian)
    assert _incoming_is_empty(node)
    assert growth < GROWTH_LIMIT_KB, f"RSS grew by {growth / 1024:.0f} MiB over {instances * 100} MiB ({before} kB)"


def test_a_deflated_instance_inflates_into_a_file_by_stow(node: Node) -> None:
    _warm_up_stow(node)
    ds, meta, deflated = _deflated(INFLATED_FRAMES)
    before = _warm(node.pid)
    _, digests = _stow(node, [iter([meta + deflated])])
    growth = _growth_kb(node.pid, before)
    _assert_stored(node, ds, digests[0], DeflatedExplicitVRLittleEndian)
    assert _incoming_is_empty(node)
    assert growth < GROWTH_LIMIT_KB, f"RSS grew by {growth / 1024:.0f} MiB inflating 496 MiB ({before} kB)"


def test_a_deflated_instance_inflates_into_a_file_by_c_store(node: Node) -> None:
    small, _, small_deflated = _deflated(1)  # warm-up: the same path once, small
    assert _c_store(node.process.port, small, small_deflated) == 0x0000
    ds, _, deflated = _deflated(INFLATED_FRAMES)
    before = _warm(node.pid)
    answered = _c_store(node.process.port, ds, deflated)
    growth = _growth_kb(node.pid, before)
    assert answered == 0x0000
    path = _assert_stored(node, ds, None, DeflatedExplicitVRLittleEndian)
    assert path.read_bytes().endswith(deflated)  # the dataset as sent, after the file meta the node wrote
    assert growth < GROWTH_LIMIT_KB, f"RSS grew by {growth / 1024:.0f} MiB inflating 496 MiB ({before} kB)"


def test_a_part_arriving_while_the_disk_guard_trips_is_refused_unwritten(settings: Settings) -> None:
    """A request that starts while free space is below min_free_disk_mb: each part is refused (0xA700) with
    the guard's reason as it arrives, and none of it is written, not even its first bytes."""
    files = PartFiles(make_settings(settings.data_dir, min_free_disk_mb=1e12))
    reader = RelatedReader('multipart/related; boundary="b"', files)
    incoming = settings.spool_dir / ".incoming"
    reader.feed(b"--b\r\n\r\n" + bytes(MiB) + b"\r\n--b\r\n\r\n" + bytes(1000) + b"\r\n--b--\r\n")
    assert not incoming.exists() or list(incoming.iterdir()) == []
    assert reader.close() == 2
    assert [(a.path, a.status) for a in files.arrived] == [(None, 0xA700)] * 2
    assert all(a.reason.startswith("disk guard: ") and a.reason.endswith(" MiB free, below min_free_disk_mb=1e+12")
               for a in files.arrived)


def test_a_part_over_max_instance_mb_is_dropped_while_it_arrives(settings: Settings) -> None:
    """The limit holds while the part arrives: its file goes as soon as the part passes it, and nothing
    more of it is written; the part is refused (0xA700) with its whole size."""
    files = PartFiles(make_settings(settings.data_dir, max_instance_mb=1, min_free_disk_mb=1))
    reader = RelatedReader('multipart/related; boundary="b"', files)
    incoming = settings.spool_dir / ".incoming"
    reader.feed(b"--b\r\n\r\n" + bytes(MiB))  # at the limit: kept
    assert [p.stat().st_size for p in incoming.iterdir()] == [MiB]
    reader.feed(b"\0")  # past it
    assert list(incoming.iterdir()) == []
    reader.feed(bytes(2 * MiB) + b"\r\n--b--\r\n")
    assert list(incoming.iterdir()) == []
    assert reader.close() == 1
    assert files.arrived == [Arrived(None, 0xA700, "instance of 3 MiB larger than max_instance_mb=1")]


def test_a_part_whose_file_cannot_be_made_is_refused_saying_why(settings: Settings) -> None:
    """The spool's .incoming is not a folder (a hand edit, a restore gone wrong): each part is refused with
    0xA700 and the file system's own words, nothing written, and the request still answered per part."""
    configured = make_settings(settings.data_dir, min_free_disk_mb=1)
    configured.spool_dir.mkdir(parents=True, exist_ok=True)
    (configured.spool_dir / ".incoming").write_bytes(b"not a folder")
    files = PartFiles(configured)
    reader = RelatedReader('multipart/related; boundary="b"', files)
    reader.feed(b"--b\r\n\r\n" + bytes(1000) + b"\r\n--b--\r\n")
    assert reader.close() == 1
    (arrived,) = files.arrived
    assert (arrived.path, arrived.status) == (None, 0xA700)
    assert arrived.reason == "could not write spool file: Not a directory"  # the OS's words, not its errno line
