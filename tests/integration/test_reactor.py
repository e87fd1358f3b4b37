"""pynetdicom's reactors woken by events (dicomnode.net.reactor), over real sockets."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pynetdicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from dicomnode.net import reactor
from tests.integration.conftest import StartScp
from tests.support.heap import steady_heap
from tests.support.net import free_port, wait_for

SLOW_WAKE = 3.0  # a wait that polled instead of waking would cost this much each time
# Fault injection, not a wait for an event: the requesting thread held up this long before it looks for the
# peer's answer. With the DUL's gate the answer waits for it however long it takes (the test cannot fail by
# timing); without the gate, 0.3 s is ample for the DUL to read the rejection and close first.
SLOW_REQUESTOR = 0.3


@pytest.fixture
def slow_idle(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    reactor.install()
    monkeypatch.setattr(reactor, "IDLE_WAKE", SLOW_WAKE)
    with steady_heap():  # the session's heap: a full collection over it would look like a missed wake-up
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


@pytest.mark.parametrize("end", ["release", "abort"])
def test_an_association_ends_on_both_sides_without_an_idle_wake(slow_idle: None, end: str) -> None:
    """The peer's A-RELEASE-RQ or A-ABORT reaches the acceptor's association thread through its DUL's queue
    for the user, not the DIMSE queue, and each side's DUL, once its connection is closed, is stopped by a
    flag of its own: both wake their thread, so both associations end in far less than one idle wake."""
    scp = AE("REACTOR")
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False)
    try:
        scu = AE("SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", port, ae_title="REACTOR")
        assert assoc.send_c_echo().Status == 0x0000
        started = time.monotonic()
        if end == "release":
            assoc.release()
        else:
            assoc.abort()
        wait_for(lambda: not assoc.is_alive() and server.active_associations == [], timeout=4 * SLOW_WAKE,
                 interval=0.01, msg="both associations' threads ended")
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    assert elapsed < SLOW_WAKE / 2, f"the {end} took {elapsed:.1f} s to end both associations: a thread was not woken"


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
    reactor.install()
    reactor.install()  # idempotent
    assert AssociationSocket.recv is reactor._recv


@pytest.mark.parametrize(("version", "follows"), [("3.0.4", True), ("3.0.1", True), ("3.0.0", False),
                                                  ("3.0.5", False), ("3.1.0", False), ("2.0.2", False)])
def test_follows_only_the_releases_it_was_written_from(version: str, follows: bool) -> None:
    assert reactor.follows(version) is follows


def test_the_installed_pynetdicom_is_the_code_it_follows() -> None:
    assert reactor.followed_source_digest() == reactor.FOLLOWED_SOURCE


@pytest.fixture
def not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process as at start, before the first install (the patch itself stays: it is process-wide)."""
    monkeypatch.setattr(reactor, "_installed", [])


@pytest.mark.usefixtures("not_installed")
def test_the_node_refuses_to_start_on_a_release_it_does_not_follow(monkeypatch: pytest.MonkeyPatch,
                                                                   start_scp_with: StartScp) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    with pytest.raises(reactor.UnfollowedPynetdicom,
                       match=r"^pynetdicom 3\.1\.0 is not a release .* install one.* and add it to FOLLOWS$"):
        start_scp_with()


@pytest.mark.usefixtures("not_installed")
def test_refuses_a_followed_version_whose_loops_were_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reactor, "_FOLLOWED", (*reactor._FOLLOWED[:-1], reactor._recv))  # one function not theirs
    with pytest.raises(reactor.UnfollowedPynetdicom, match=r"^pynetdicom 3\.0\.\d's loops are not the code"):
        reactor.install()


def test_a_reactor_released_late_leaves_the_next_response_alone(slow_idle: None,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A requestor's ``send_c_*`` pauses its reactor (clears the checkpoint, then waits for ``_is_paused``) so
    that the response is its own. A reactor that one request's end let go but that has not run since (a busy
    machine) still reads as paused to the next request: here it is held in that window until the next
    response is queued; it must leave that response to the request, not take it as an unexpected message."""
    scp = AE("REACTOR")
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False)
    try:
        scu = AE("SCU")
        scu.add_requested_context(Verification)
        scu.dimse_timeout = 2  # a response taken by the reactor leaves its request waiting this long
        assoc = scu.associate("127.0.0.1", port, ae_title="REACTOR")
        assert assoc.is_established
        _hold_in_the_window(assoc)
        statuses = [assoc.send_c_echo().get("Status") if assoc.is_established else None for _ in range(3)]
        if assoc.is_established:
            assoc.release()
    finally:
        server.shutdown()
    assert statuses == [0x0000] * 3
    assert "unexpected" not in caplog.text


def _hold_in_the_window(assoc: Association) -> None:
    """Hold ``assoc``'s reactor, once, just after its checkpoint lets it go, until the next request has
    paused it again and that request's response is queued; that request reads the queue only after the
    reactor's next step (its next read of the queue, or its next pause)."""
    checkpoint, messages = assoc._reactor_checkpoint, assoc.dimse.msg_queue
    real_wait, real_get = checkpoint.wait, assoc.dimse.get_msg
    held, moved = threading.Event(), threading.Event()

    def wait(timeout: float | None = None) -> bool:
        in_reactor = threading.current_thread() is assoc
        if in_reactor and held.is_set():
            moved.set()  # paused again, the queue untouched
        released = real_wait(timeout)
        if in_reactor and not held.is_set():
            held.set()
            # polled here, in the reactor's thread: a timeout only ends the hold (the test fails on what follows)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not checkpoint.is_set() and messages.qsize(), timeout=5, interval=0.001,
                         msg="the next request paused the reactor and its response is queued")
        return released

    def get_msg(block: bool = False) -> Any:
        in_reactor = threading.current_thread() is assoc
        if not in_reactor and held.is_set():
            moved.wait(5)
        got = real_get(block)
        if in_reactor and held.is_set():
            moved.set()
        return got

    checkpoint.wait = wait  # type: ignore[method-assign]
    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]


def test_a_rejection_that_comes_before_the_requestor_looks_is_a_rejection(start_scp_with: StartScp) -> None:
    """A peer that answers A-ASSOCIATE-RJ and closes before the requesting thread has looked for its answer
    (here: a slow EVT_REQUESTED handler on the requestor, as a busy machine makes any thread) is reported
    as the rejection it is, with its reason, not as an abort: pynetdicom's requestor checks that the
    connection is still open before it reads the answer, and the DUL, woken at once by the reactor, has
    read the rejection and closed it by then. Without the gate every one of these came back aborted."""
    scp = start_scp_with()
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    for _ in range(3):
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOMNODE",
                             evt_handlers=[(evt.EVT_REQUESTED, lambda event: time.sleep(SLOW_REQUESTOR))])
        assert (assoc.is_rejected, assoc.is_aborted) == (True, False)
        assert assoc.acceptor.primitive is not None and assoc.acceptor.primitive.diagnostic == 0x03
