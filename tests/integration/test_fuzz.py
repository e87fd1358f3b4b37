"""Fuzz the SCP through real loopback associations: malformed datasets (C-STORE) and malformed PDUs.

Every malformed dataset must get a specific status (success only when it still decodes to a valid
instance, which is then stored whole), never the catch-all 0xC2FF; no temporary file may be left; and
the node must keep serving. CI runs a bounded sample; ``pytest -m slow`` runs 10,000 of each.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import traceback
from collections import Counter
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

import dicomnode
from dicomnode.jobs.models import Instance
from tests.integration.conftest import RunningScp, StartScp
from tests.support.net import wait_for
from tests.support.peers import echoscu
from tests.support.rawdicom import associate_rq
from tests.support.synthetic import make_series

CI_SAMPLE = int(os.environ.get("DICOMNODE_FUZZ_EXAMPLES", "300"))
PACKAGE = Path(dicomnode.__file__).resolve().parent
FULL = 10_000
PDU_SLOTS = 40
# 0xC213: a flipped byte in PatientID makes the same study another patient's (a UID collision);
# 0xA900: a flipped byte in Rows/Columns/BitsAllocated's tag leaves pixel data without its image attributes
ALLOWED = {0x0000, 0xA700, 0xA701, 0xA900, 0xC210, 0xC211, 0xC212, 0xC213}
BASE_UID = "1.2.826.0.1.3680043.10.1234.1"


def _encoded(ds: Dataset) -> bytes:
    """The dataset alone (no preamble, no file meta), explicit VR little endian."""
    bare = Dataset(ds)
    buffer = BytesIO()
    with pydicom_config.disable_value_validation():
        dcmwrite(buffer, bare, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _base() -> Dataset:
    ds = make_series(n_slices=1, rows=8, columns=8)[0]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = BASE_UID
    return ds


BASE = _base()
BASE_BYTES = _encoded(BASE)


def _bad_uid_dataset(keyword: str, value: str) -> bytes:
    ds = _base()
    with pydicom_config.disable_value_validation():
        setattr(ds, keyword, value)
    return _encoded(ds)


mutations = st.one_of(
    st.integers(0, len(BASE_BYTES) - 1).map(lambda n: BASE_BYTES[:n]),                       # truncated
    st.lists(st.tuples(st.integers(0, len(BASE_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=12)
    .map(lambda flips: _flip(BASE_BYTES, flips)),                                             # bytes changed
    st.tuples(st.integers(0, len(BASE_BYTES)), st.binary(min_size=1, max_size=64))
    .map(lambda ins: BASE_BYTES[:ins[0]] + ins[1] + BASE_BYTES[ins[0]:]),                     # bytes inserted
    st.binary(max_size=1024),                                                                 # noise
    st.tuples(st.sampled_from(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]),
              st.one_of(st.text(st.characters(min_codepoint=0, max_codepoint=0x7E), max_size=80),
                        st.just("../../etc/passwd"), st.just("1." + "9" * 80),
                        st.just(""), st.just("1.2.3.\x00")))
    .map(lambda kv: _bad_uid_dataset(*kv)),                                                   # absurd UIDs
)


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in flips:
        buffer[position] = value
    return bytes(buffer)


def unique_uid(number: int) -> str:
    """A UID as long as ``BASE_UID``, so that it replaces it in encoded bytes without changing lengths."""
    uid = f"1.2.826.0.1.3680043.10.{100_000 + number}"
    assert len(uid) == len(BASE_UID)
    return uid


class Sender:
    """One association, re-opened whenever the node aborted the previous one."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port, self.folder = port, folder
        self.assoc: Association | None = None
        self.path = folder / "case.dcm"

    def send(self, dataset_bytes: bytes, header: bytes = b"") -> int | None:
        self.path.write_bytes((header or HEADER) + dataset_bytes)
        if self.assoc is None or not self.assoc.is_established:
            ae = AE(ae_title="PYSCU")
            ae.add_requested_context(MRImageStorage, BASE.file_meta.TransferSyntaxUID)
            self.assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOMNODE")
            assert self.assoc.is_established, "the node stopped accepting associations"
        rsp = self.assoc.send_c_store(self.path)
        return int(rsp.Status) if rsp is not None and "Status" in rsp else None

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


def _file_meta(ds: Dataset) -> bytes:
    buffer = BytesIO()
    full = Dataset()
    full.file_meta = ds.file_meta
    full.SOPClassUID = ds.SOPClassUID
    dcmwrite(buffer, full, enforce_file_format=True)
    raw = buffer.getvalue()[132:]
    group_length = struct.unpack("<I", raw[8:12])[0]
    return raw[:12 + group_length]


HEADER = b"\0" * 128 + b"DICM" + _file_meta(BASE)


def _in_package(filename: str) -> bool:
    """Whether a traceback frame is dicomnode's own code. A path test such as "/dicomnode/" in the name
    would also match pynetdicom's frames in a checkout folder called dicomnode (.../dicomnode/.venv/...).
    dicomnode/net/reactor.py holds pynetdicom's own reactor loops (woken instead of polling): a frame there is
    pynetdicom's loop calling its state machine, not the node's code."""
    path = Path(filename).resolve()
    return path.is_relative_to(PACKAGE) and path != PACKAGE / "reactor.py"


def _fuzz_datasets(scp: RunningScp, tmp_path: Path, examples: int, monkeypatch: pytest.MonkeyPatch,
                   *, derandomize: bool) -> Counter[str]:
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)  # send our bytes as they are
    sender = Sender(scp.port, tmp_path)
    statuses: Counter[str] = Counter()

    numbers = iter(range(1_000_000))

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck))
    @given(case=mutations)
    def one(case: bytes) -> None:
        uid = unique_uid(next(numbers)).encode()  # each case its own instance: "stored whole" sees each
        case = case.replace(BASE_UID.encode(), uid)
        status = sender.send(case, HEADER.replace(BASE_UID.encode(), uid))
        statuses["none" if status is None else f"0x{status:04X}"] += 1
        assert status is None or status in ALLOWED, f"status 0x{status:04X}"
        if status == 0x0000:  # acknowledged: the spool holds exactly the bytes sent
            with scp.sessions() as session:
                path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == uid.decode()))
            assert path is not None, "acknowledged but not recorded"
            assert Path(path).read_bytes().endswith(case), "acknowledged but not stored as sent"

    try:
        one()
    finally:
        sender.close()
    assert not any(scp.settings.data_dir.rglob("*.tmp")), "a temporary spool file was left behind"
    with scp.sessions() as session:
        for row in session.scalars(select(Instance)):
            assert Path(row.path).is_file()
    assert echoscu(scp.port, called="DICOMNODE", calling="STORESCU").returncode == 0
    return statuses


# a minimal, valid A-ASSOCIATE-RQ proposing Verification: user information holds the maximum length alone
RQ = associate_rq("1.2.840.10008.1.1", calling="STORESCU", transfer_syntax="1.2.840.10008.1.2", implementation_uid=None)
pdus = st.one_of(
    st.binary(max_size=512),
    st.integers(0, len(RQ) - 1).map(lambda n: RQ[:n]),
    st.lists(st.tuples(st.integers(0, len(RQ) - 1), st.integers(0, 255)), min_size=1, max_size=8)
    .map(lambda flips: _flip(RQ, flips)),
    st.tuples(st.sampled_from([0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x99]), st.binary(max_size=64))
    .map(lambda tb: struct.pack(">BBI", tb[0], 0, len(tb[1])) + tb[1]),  # PDUs out of order or unknown
    st.binary(max_size=64).map(lambda tail: RQ + tail),  # a valid request with garbage after it
)


def _fuzz_pdus(scp: RunningScp, examples: int, monkeypatch: pytest.MonkeyPatch, *, derandomize: bool
               ) -> tuple[int, int]:
    """Each case on its own connection. pynetdicom keeps an association slot until the ACSE timeout after
    a peer hangs up mid-negotiation, so the fixture uses a 1 s ACSE timeout and each case waits for a
    free slot: every case reaches the PDU parser instead of the association limit."""
    count = 0
    ae = scp.servers[0].ae
    fsm_errors: list[BaseException] = []
    other_errors: list[BaseException] = []

    def excepthook(args: threading.ExceptHookArgs) -> None:
        # pynetdicom's own threads give up on some malformed PDU sequences (InvalidEventError, ValueError
        # while decoding): that connection ends, the node serves on. Count them; an exception raised in
        # dicomnode's code fails the test.
        frames = traceback.extract_tb(args.exc_traceback)
        ours = any(_in_package(frame.filename) for frame in frames)
        (other_errors if ours else fsm_errors).append(args.exc_value)

    monkeypatch.setattr(threading, "excepthook", excepthook)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck))
    @given(pdu=pdus)
    def one(pdu: bytes) -> None:
        nonlocal count
        wait_for(lambda: len(ae.active_associations) < PDU_SLOTS - 2, timeout=30, msg="a free association slot")
        with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as sock:
            sock.sendall(pdu)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.2)  # read what the node answers, if anything; it need not close first
            try:
                while sock.recv(4096):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
        count += 1

    one()
    result = echoscu(scp.port, called="DICOMNODE", calling="STORESCU")
    assert result.returncode == 0, "the node stopped serving after malformed PDUs"
    assert other_errors == []
    return count, len(fsm_errors)


# pydicom warns about odd encodings it still reads; the node runs with warnings as warnings, not errors
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_datasets_sample(scp: RunningScp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = _fuzz_datasets(scp, tmp_path, CI_SAMPLE, monkeypatch, derandomize=True)
    print(f"\n{sum(statuses.values())} malformed datasets: {dict(statuses)}")
    assert sum(statuses.values()) >= CI_SAMPLE // 2


@pytest.fixture
def pdu_scp(start_scp_with: StartScp) -> RunningScp:
    return start_scp_with(acse_timeout_seconds=1, network_timeout_seconds=5, max_associations=PDU_SLOTS)


def test_fuzz_pdus_sample(pdu_scp: RunningScp, monkeypatch: pytest.MonkeyPatch) -> None:
    count, fsm_errors = _fuzz_pdus(pdu_scp, CI_SAMPLE, monkeypatch, derandomize=True)
    print(f"\n{count} malformed PDUs, node still serving ({fsm_errors} connections given up inside pynetdicom)")
    assert count >= CI_SAMPLE // 2


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_datasets_full(scp: RunningScp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = _fuzz_datasets(scp, tmp_path, FULL, monkeypatch, derandomize=False)
    print(f"\n{sum(statuses.values())} malformed datasets: {dict(statuses)}")
    assert sum(statuses.values()) >= FULL * 0.9


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fuzz_pdus_full(pdu_scp: RunningScp, monkeypatch: pytest.MonkeyPatch) -> None:
    count, fsm_errors = _fuzz_pdus(pdu_scp, FULL, monkeypatch, derandomize=False)
    print(f"\n{count} malformed PDUs, node still serving ({fsm_errors} connections given up inside pynetdicom)")
    assert count >= FULL * 0.9
