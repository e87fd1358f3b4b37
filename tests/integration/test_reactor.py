"""pynetdicom's reactors woken by events (dicomnode.net.reactor), over real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from dicomnode.net import reactor
from tests.support.net import free_port, wait_for

SLOW_WAKE = 3.0  # a wait that polled instead of waking would cost this much each time


@pytest.fixture
def slow_idle(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    assert reactor.install()
    monkeypatch.setattr(reactor, "IDLE_WAKE", SLOW_WAKE)
    yield


def _dataset(i: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"1.2.826.0.1.3680043.10.511.9.{i}"
    ds.PatientID, ds.Modality = "REACTOR", "CT"
    ds.PixelData, ds.Rows, ds.Columns, ds.BitsAllocated = b"\0" * 4096, 64, 32, 16
    return ds


def test_messages_wake_both_reactors(slow_idle: None) -> None:
    """Each C-ECHO and C-STORE wakes the acceptor's DUL (PDU in), its association thread (message
    decoded) and its DUL again (response queued): 30 of them take far less than one idle wake each."""
    received: list[str] = []
    scp = AE("REACTOR")
    scp.add_supported_context(Verification)
    scp.add_supported_context(CTImageStorage)

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        scu = AE("SCU")
        scu.add_requested_context(Verification)
        scu.add_requested_context(CTImageStorage)
        assoc = scu.associate("127.0.0.1", port, ae_title="REACTOR")
        assert assoc.is_established
        try:
            started = time.monotonic()
            statuses = [assoc.send_c_echo().Status for _ in range(20)]
            statuses += [assoc.send_c_store(_dataset(i)).Status for i in range(10)]
            elapsed = time.monotonic() - started
        finally:
            assoc.release()
    finally:
        server.shutdown()
    assert statuses == [0x0000] * 30
    assert received == [f"1.2.826.0.1.3680043.10.511.9.{i}" for i in range(10)]
    # 30 exchanges, each waiting in three idle waits if nothing woke them: 90 x 3 s
    assert elapsed < 10 * SLOW_WAKE, f"30 exchanges took {elapsed:.1f} s: the reactors are not woken"


def test_peer_abort_ends_the_association(slow_idle: None) -> None:
    """A peer's A-ABORT reaches the acceptor through its socket: its handlers see it, its threads end."""
    aborted = threading.Event()
    scp = AE("REACTOR")
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_ABORTED, lambda event: aborted.set())])
    try:
        scu = AE("SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", port, ae_title="REACTOR")
        assert assoc.send_c_echo().Status == 0x0000
        assoc.abort()
        assert aborted.wait(4 * SLOW_WAKE), "the acceptor never saw the A-ABORT"
        wait_for(lambda: server.active_associations == [], timeout=4 * SLOW_WAKE,
                 msg="the aborted association's threads ended")
    finally:
        server.shutdown()


class _Holder:
    """What AssociationSocket.recv reads from: a plain socket attribute."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def test_recv_reads_exactly_across_partial_sends() -> None:
    left, right = socket.socketpair()
    payload = bytes(range(256)) * 5000  # 1.28 MB, more than one RECV_CHUNK

    def sender() -> None:
        for start in range(0, len(payload), 70_001):  # pieces that end mid-chunk
            right.sendall(payload[start:start + 70_001])

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        got = reactor._recv(_Holder(left), len(payload) - 10)  # type: ignore[arg-type]
        rest = reactor._recv(_Holder(left), 10)  # type: ignore[arg-type]
    finally:
        thread.join()
    assert bytes(got) == payload[:-10] and bytes(rest) == payload[-10:]
    right.close()
    assert reactor._recv(_Holder(left), 100) == bytearray()  # the peer closed: what there is, here none
    left.close()


def test_recv_returns_what_arrived_before_the_peer_closed() -> None:
    left, right = socket.socketpair()
    right.sendall(b"partial PDU")
    right.close()
    assert reactor._recv(_Holder(left), 1000) == bytearray(b"partial PDU")
    left.close()


def test_installed_in_place_of_polling() -> None:
    assert reactor.install() and reactor.install()  # idempotent
    assert AssociationSocket.recv is reactor._recv


@pytest.mark.parametrize(("version", "follows"), [("3.0.4", True), ("3.0.1", True), ("3.1.0", False),
                                                  ("2.0.2", False)])
def test_patches_only_the_release_it_follows(version: str, follows: bool) -> None:
    assert reactor.follows(version) is follows
