"""The node's own C-STORE data phase (:mod:`dicomnode.receive.dataphase.native`) over real loopback sockets.

The rest of the receive suites run against it too, as the default engine; these tests cover what is
its own: it stores what pynetdicom's engine stores, byte for byte; it leaves to pynetdicom what it does
not take (a command over several PDVs, a message pynetdicom began) and hands pynetdicom the rest of a
PDU it shares; its answer respects the peer's maximum PDU size; P-DATA that breaks the rules mid-dataset
aborts the association and leaves no file; an incoming file it cannot create is answered 0xA700 and
audited; and malformed P-DATA never raises in the node's code (a bounded, seeded fuzz sample; all of it
with ``pytest -m slow``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Instance
from dicomnode.receive.dataphase import native
from dicomnode.receive.incoming import incoming_dir
from tests.integration.conftest import RunningScp, StartScp
from tests.support.net import wait_for
from tests.support.peers import echoscu, storescu
from tests.support.rawdicom import (
    A_ABORT,
    COMMAND,
    LAST,
    RawAssociation,
    c_store_rq,
    fragments,
    p_data,
    pdv,
    status,
)
from tests.support.synthetic import make_series, write_series

MR = str(MRImageStorage)
FUZZ_SAMPLE = int(os.environ.get("DICOMNODE_FUZZ_EXAMPLES", "300")) // 2
FUZZ_FULL = 5_000
SLOTS = 40


class Taken(list[str]):
    """SOP Instance UIDs that the node's data phase (not pynetdicom's) handed to the store path, and
    those of them whose header it parsed while the dataset arrived."""

    early: list[str]


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Taken:
    uids = Taken()
    uids.early = []
    real = native.store_received

    def spy(received: Any, ctx: Any) -> int:
        uids.append(received.sop_instance_uid)
        if received.header is not None:
            uids.early.append(received.sop_instance_uid)
        return real(received, ctx)

    monkeypatch.setattr(native, "store_received", spy)
    return uids


def _instance(number: int = 0, rows: int = 8) -> tuple[str, bytes]:
    """A small MR instance: its SOP Instance UID and its dataset, explicit VR little endian."""
    ds = make_series(n_slices=1, rows=rows, columns=rows)[0]
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1234.7.{number}"
    buffer = BytesIO()
    dcmwrite(buffer, Dataset(ds), implicit_vr=False, little_endian=True)
    return str(ds.SOPInstanceUID), buffer.getvalue()


def _rows(scp: RunningScp) -> dict[str, tuple[str, str]]:
    with scp.sessions() as session:
        return {i.sop_instance_uid: (i.path, i.sha256) for i in session.scalars(select(Instance))}


def _pyscu_store(scp: RunningScp, ds: Dataset) -> int:
    """One C-STORE from the known peer PYSCU (pynetdicom), on an association of its own: the status."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _incoming_empty(scp: RunningScp) -> bool:
    return not any(incoming_dir(scp.settings).iterdir())


def test_a_storescu_series_is_read_by_the_node_and_stored_as_pynetdicom_stores_it(
    start_scp_with: StartScp, tmp_path: Path, taken: Taken
) -> None:
    own, classic = start_scp_with(), start_scp_with(receive_engine="pynetdicom")
    series = make_series(n_slices=3, rows=256, columns=256)  # 128 KiB each: several PDUs, header parsed early
    files = write_series(series, tmp_path / "series")
    for scp in (own, classic):
        assert storescu(scp.port, files, called="DICOMNODE").returncode == 0
    assert sorted(taken) == sorted(str(ds.SOPInstanceUID) for ds in series)  # own's, none of classic's
    assert sorted(taken.early) == sorted(taken)
    own_rows, classic_rows = _rows(own), _rows(classic)
    assert own_rows.keys() == classic_rows.keys() == set(taken)
    for uid, (path, sha256) in own_rows.items():
        classic_path, classic_sha256 = classic_rows[uid]
        assert Path(path).relative_to(own.settings.spool_dir) == Path(classic_path).relative_to(
            classic.settings.spool_dir)
        assert Path(path).read_bytes() == Path(classic_path).read_bytes()  # preamble, file meta, dataset
        assert sha256 == classic_sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert _incoming_empty(own)


def test_a_command_over_two_pdvs_is_left_to_pynetdicom_and_the_next_one_is_taken(
    scp: RunningScp, taken: Taken
) -> None:
    (uid1, data1), (uid2, data2) = _instance(1), _instance(2)
    assoc = RawAssociation(scp.port, MR)
    assert assoc.accepted
    command = c_store_rq(MR, uid1, message_id=1)
    assoc.send(p_data([pdv(1, COMMAND, command[:20])]) + p_data([pdv(1, COMMAND | LAST, command[20:])]))
    assoc.send(p_data([pdv(1, LAST, data1)]))
    assert status(assoc.read_response()) == 0x0000
    assoc.send(p_data([pdv(1, COMMAND | LAST, c_store_rq(MR, uid2, message_id=2))]) + p_data(fragments(1, data2, 100)))
    assert status(assoc.read_response()) == 0x0000
    assert assoc.release()
    assert taken == [uid2]
    assert _rows(scp).keys() == {uid1, uid2}


def test_a_pdu_ending_one_message_and_starting_the_next_hands_the_rest_to_pynetdicom(
    scp: RunningScp, taken: Taken
) -> None:
    (uid1, data1), (uid2, data2) = _instance(1), _instance(2)
    assoc = RawAssociation(scp.port, MR)
    assoc.send(p_data([pdv(1, COMMAND | LAST, c_store_rq(MR, uid1, 1)), pdv(1, LAST, data1),
                       pdv(1, COMMAND | LAST, c_store_rq(MR, uid2, 2))]))
    assoc.send(p_data([pdv(1, LAST, data2)]))
    assert [status(assoc.read_response()), status(assoc.read_response())] == [0x0000, 0x0000]
    assert assoc.release()
    assert taken == [uid1]
    assert _rows(scp).keys() == {uid1, uid2}


@pytest.mark.parametrize("max_pdu", [64, 0])
def test_the_answer_fits_the_peers_maximum_pdu_size(scp: RunningScp, taken: Taken, max_pdu: int) -> None:
    """A peer's maximum of 64 bytes: the answer in PDUs of at most 64; 0 (no maximum, PS3.8 D.1.1): in one."""
    uid, data = _instance()
    assoc = RawAssociation(scp.port, MR, max_pdu=max_pdu)
    assoc.send(p_data([pdv(1, COMMAND | LAST, c_store_rq(MR, uid))]) + p_data(fragments(1, data, 58)))
    answer = assoc.read_response()
    assert status(answer) == 0x0000
    assert answer is not None and answer[0x1000].rstrip(b"\0").decode() == uid
    if max_pdu:
        assert assoc.largest_pdu <= max_pdu and assoc.data_pdus > 1
    else:
        assert assoc.data_pdus == 1
    assert assoc.release()
    assert taken == [uid]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of the unknown VR as it reads on
def test_a_header_pydicom_cannot_decode_is_answered_0xc210_as_a_whole_file_would_be(
    scp: RunningScp, taken: Taken
) -> None:
    """A kept attribute with an unknown VR: the walk gives up, pydicom reads the prefix, and decoding
    the value fails (not with a ValueError); the instance is refused 0xC210 and the association serves on."""
    uid, data = _instance(rows=256)  # past the early parse's 64 KiB
    data = data.replace(b"\x08\x00\x16\x00UI", b"\x08\x00\x16\x00QQ", 1)  # SOP Class UID's VR
    assoc = RawAssociation(scp.port, MR)
    assoc.send(p_data([pdv(1, COMMAND | LAST, c_store_rq(MR, uid))]) + p_data(fragments(1, data, 16000)))
    assert status(assoc.read_response()) == 0xC210
    assert assoc.release()
    assert taken == [uid] and taken.early == [uid]
    assert _rows(scp) == {}
    wait_for(lambda: _incoming_empty(scp), timeout=10, msg="no incoming file left")


BROKEN: dict[str, Callable[[bytes], bytes]] = {
    "a command fragment inside the dataset": lambda rest: p_data([pdv(1, COMMAND | LAST, rest[:40])]),
    "a fragment on another presentation context": lambda rest: p_data([pdv(3, LAST, rest)]),
    "a PDV longer than its PDU": lambda rest: p_data([struct.pack(">IBB", len(rest) + 102, 1, LAST) + rest]),
}


@pytest.mark.parametrize("broken", BROKEN, ids=list(BROKEN))
def test_p_data_breaking_the_rules_mid_dataset_aborts_and_leaves_no_file(
    scp: RunningScp, taken: Taken, broken: str
) -> None:
    uid, data = _instance(rows=64)
    assoc = RawAssociation(scp.port, MR)
    half = len(data) // 2
    assoc.send(p_data([pdv(1, COMMAND | LAST, c_store_rq(MR, uid)), pdv(1, 0, data[:half])]))
    wait_for(lambda: not _incoming_empty(scp), timeout=10, msg="the dataset arriving")
    assoc.send(BROKEN[broken](data[half:]))
    kind, _ = assoc.read_pdu()
    assert kind in (A_ABORT, 0)  # aborted (or the connection closed): never an answer
    assoc.close()
    wait_for(lambda: _incoming_empty(scp), timeout=10, msg="the partial file removed")
    assert _rows(scp) == {}
    assert echoscu(scp.port, called="DICOMNODE", calling="STORESCU").returncode == 0


def test_an_incoming_file_that_cannot_be_created_is_answered_0xa700_and_audited(
    scp: RunningScp, taken: Taken
) -> None:
    folder = incoming_dir(scp.settings)
    folder.rmdir()
    folder.write_text("not a folder")  # creating a file in it fails, even for root
    try:
        assert _pyscu_store(scp, make_series(n_slices=1)[0]) == 0xA700
    finally:
        folder.unlink()
        folder.mkdir(mode=0o700)
    assert taken == []  # refused before the store path
    assert _rows(scp) == {}
    with scp.sessions() as session:
        (row,) = session.scalars(select(AuditRecord).where(AuditRecord.event == "instance_refused"))
    detail = json.loads(row.detail)
    assert (detail["status"], detail["reason"]) == ("0xA700", "incoming file could not be created: Not a directory")


def test_the_file_meta_is_pynetdicoms_byte_for_byte() -> None:
    for sop_class, sop_instance, syntax in [(MR, "1.2.3.4", "1.2.840.10008.1.2.1"),
                                            ("1.2.840.10008.5.1.4.1.1.2", "1.2.33", "1.2.840.10008.1.2.4.50")]:
        expected = BytesIO()
        expected.write(b"\0" * 128 + b"DICM")
        meta = create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance),
                                transfer_syntax=UID(syntax))
        write_file_meta_info(expected, meta)
        assert native._file_meta(sop_class, sop_instance, syntax) == expected.getvalue()


# --- fuzz: malformed P-DATA on established associations ------------------------------------------------

_UID, _DATA = _instance(9)
_STREAM = (p_data([pdv(1, COMMAND | LAST, c_store_rq(MR, _UID))])
           + b"".join(p_data([fragment]) for fragment in fragments(1, _DATA, 256)))


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in flips:
        buffer[position] = value
    return bytes(buffer)


streams = st.one_of(
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), min_size=1, max_size=6)
    .map(lambda flips: _flip(_STREAM, flips)),                                       # the command PDU
    st.lists(st.tuples(st.integers(0, len(_STREAM) - 1), st.integers(0, 255)), min_size=1, max_size=6)
    .map(lambda flips: _flip(_STREAM, flips)),                                       # anywhere
    st.integers(0, len(_STREAM) - 1).map(lambda n: _STREAM[:n]),                     # cut off
    st.tuples(st.integers(0, len(_STREAM)), st.binary(min_size=1, max_size=32))
    .map(lambda ins: _STREAM[:ins[0]] + ins[1] + _STREAM[ins[0]:]),                 # bytes inserted
)


def _fuzz(scp: RunningScp, examples: int, caplog: pytest.LogCaptureFixture, *, derandomize: bool) -> int:
    answered = 0
    ae = scp.servers[0].ae

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck))
    @given(stream=streams)
    def one(stream: bytes) -> None:
        nonlocal answered
        # the node holds a slot until it sees each cut-off case's connection close: wait for a free one
        wait_for(lambda: len(ae.active_associations) < SLOTS - 2, timeout=30, msg="a free association slot")
        assoc = RawAssociation(scp.port, MR, timeout=10)
        assert assoc.accepted
        assoc.send(stream)
        assoc.sock.settimeout(1)  # a cut-off stream gets no answer: the node waits for the rest
        answer = assoc.read_response()
        assoc.close()
        if answer is not None and 0x0900 in answer:
            answered += 1
            assert struct.unpack("<H", answer[0x0900])[0] in {0x0000, 0x0122, 0xA700, 0xC210, 0xC211, 0xC212, 0xC213}

    with caplog.at_level(logging.ERROR, logger="dicomnode"):
        one()
    wait_for(lambda: _incoming_empty(scp), timeout=30, msg="no incoming file left")
    assert echoscu(scp.port, called="DICOMNODE", calling="STORESCU").returncode == 0
    # errors only: an earlier test may have left the "dicomnode" logger at INFO (the echo above logs one)
    assert [r for r in caplog.records if r.name.startswith("dicomnode.receive") and r.levelno >= logging.ERROR] == []
    return answered


@pytest.fixture
def fuzz_scp(start_scp_with: StartScp) -> RunningScp:
    return start_scp_with(network_timeout_seconds=2, max_associations=SLOTS)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_p_data_sample(fuzz_scp: RunningScp, caplog: pytest.LogCaptureFixture) -> None:
    answered = _fuzz(fuzz_scp, FUZZ_SAMPLE, caplog, derandomize=True)
    print(f"\n{FUZZ_SAMPLE} malformed P-DATA streams, {answered} answered, node still serving")
    assert answered > 0  # the sample reaches the store path, not only the parser


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_p_data_full(fuzz_scp: RunningScp, caplog: pytest.LogCaptureFixture) -> None:
    assert _fuzz(fuzz_scp, FUZZ_FULL, caplog, derandomize=False) > 0


@pytest.mark.parametrize("engine", ["native", "pynetdicom"])
def test_a_c_store_on_a_context_never_accepted_aborts_and_leaves_no_file(start_scp_with: StartScp,
                                                                          engine: str,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """pynetdicom creates the dataset's file before it finds the context unknown, then gives up on the
    association; the connection must still close, and its file go (both engines)."""
    scp = start_scp_with(receive_engine=engine)
    uid, data = _instance()
    assoc = RawAssociation(scp.port, MR)
    assoc.send(p_data([pdv(3, COMMAND | LAST, c_store_rq(MR, uid))]) + p_data([pdv(3, LAST, data)]))
    kind, _ = assoc.read_pdu()
    assert kind in (A_ABORT, 0)
    assoc.close()
    wait_for(lambda: _incoming_empty(scp), timeout=10, msg="no incoming file left")
    assert _rows(scp) == {}
    assert echoscu(scp.port, called="DICOMNODE", calling="STORESCU").returncode == 0
    if engine == "pynetdicom":  # its DUL thread gave up: the log says on what, with the traceback
        dul = [r for r in caplog.records if r.name == "pynetdicom.dul"]
        assert [r.getMessage() for r in dul][:1] == ["Exception in DUL.run(), aborting association"]
        assert len(dul) == 2 and dul[1].exc_info and dul[1].getMessage() == str(dul[1].exc_info[1])


def test_a_file_whose_fsync_fails_is_answered_0xa700_and_left_nowhere(
    scp: RunningScp, taken: Taken, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new instance's file is renamed into the spool while its fsync runs; when the fsync fails (a
    disk's I/O error, injected: no test disk fails on demand), no row is committed, the file goes, and
    the peer gets 0xA700."""
    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(native, "_fsync", failing)
    ds = make_series(n_slices=1, rows=256, columns=256)[0]
    assert _pyscu_store(scp, ds) == 0xA700
    assert taken == [str(ds.SOPInstanceUID)]
    assert _rows(scp) == {}
    assert [p for p in scp.settings.spool_dir.rglob("*") if p.is_file()] == []
    with scp.sessions() as session:
        (row,) = session.scalars(select(AuditRecord).where(AuditRecord.event == "instance_refused"))
    assert json.loads(row.detail)["status"] == "0xA700" and "Input/output error" in json.loads(row.detail)["reason"]
