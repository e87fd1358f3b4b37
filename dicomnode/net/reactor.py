"""pynetdicom's reactors, woken by what they wait for instead of polling every millisecond.

pynetdicom 3.0 runs two loops per association, and both poll:

- the DUL thread sleeps 1 ms whenever a pass found nothing to do, so a PDU from the peer, or a
  response the handler just queued for sending, waits up to a millisecond;
- the association thread sleeps 1 ms before each look for a decoded DIMSE message, so a complete
  C-STORE waits up to another millisecond before its handler runs.

With one C-STORE at a time per association (no asynchronous operations window), each instance pays
these waits three times over, and each idle association wakes 2,000 times a second, which four
associations on two cores feel. The socket reads come 4 KiB at a time, 128 ``recv`` calls and copies
for a 0.5 MB slice.

:func:`install` replaces those waits, and only those: the DUL thread waits in ``select`` on its socket
and on a wake-up socket that whatever gives it work or stops it writes to
(:meth:`~pynetdicom.dul.DULServiceProvider.send_pdu`, ``kill_dul``, ``stop_dul``, a socket's close); the
association thread waits on the DIMSE message queue's own condition, which whatever else it looks at
notifies (:func:`_poke`: a primitive for the user, such as the peer's A-RELEASE-RQ or A-ABORT; a request
pausing it; its kill); both still wake at least every :data:`IDLE_WAKE` seconds for their timers, so every
check happens in the same order as before, only sooner. Socket reads fill one buffer with ``recv_into``.

pynetdicom's pause handshake (a request clears ``_reactor_checkpoint``, then waits for ``_is_paused``) lets a
reactor that one request's end released, but that has not run since, still read as paused to the next
request, and then take that request's response as an unexpected message (pynetdicom's own loop does it
too; pydicom/pynetdicom#875 reports the symptom): the copied loop closes it (:func:`_pause`).

A requestor's DUL, woken at once, could read a peer's A-ASSOCIATE-RJ and close the connection before the
requesting thread had checked that the connection was open, which then reported an abort instead of the
rejection and its reason: until that thread waits for the answer, the DUL leaves it unread
(:func:`_answer_not_awaited`).

It patches only the pynetdicom releases its copies follow (:data:`FOLLOWS`, whose replaced code hashes to
:data:`FOLLOWED_SOURCE`), and refuses any other (:class:`UnfollowedPynetdicom`) when the node starts.

:func:`set_p_data_hook` gives an acceptor AE a first look at each P-DATA-TF PDU its established
associations receive (the node's own C-STORE data phase, :mod:`dicomnode.receive.dataphase.native`); a PDU the
hook does not take goes on to pynetdicom's state machine as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

from dicomnode.errors import DicomNodeError
from dicomnode.net import uids

# the copied loops log what pynetdicom's own did, on its own loggers (the node keeps those at WARNING)
_dul_log = logging.getLogger("pynetdicom.dul")
_assoc_log = logging.getLogger("pynetdicom.association")

FOLLOWS = ("3.0.1", "3.0.2", "3.0.3", "3.0.4")  # pynetdicom releases whose loops the functions below follow
# sha256 of the source of _FOLLOWED as each of those releases ships it (the same in all four)
FOLLOWED_SOURCE = "c227132af7afc736e983a60c8eb3226a00df13397bd45f4f5f62e5828cd5a171"
IDLE_WAKE = 0.02  # seconds between passes when nothing happens (timers)
ANSWER_GATE = 10.0  # seconds a requestor's DUL waits for its thread to look for the A-ASSOCIATE answer
RECV_CHUNK = 2**20
P_DATA_TF = 0x04

# pynetdicom's functions that install() replaces with copies or wraps, as imported (before any patch)
_FOLLOWED: tuple[Callable[..., Any], ...] = (
    DULServiceProvider.__init__, DULServiceProvider.run_reactor, DULServiceProvider._read_pdu_data,
    DULServiceProvider.send_pdu, DULServiceProvider.kill_dul, DULServiceProvider.stop_dul,
    Association.__init__, Association._run_reactor, Association.kill,
    AssociationSocket.recv, AssociationSocket.close,
)

PDataHook = Callable[[DULServiceProvider, bytearray], bool]
"""Given the DUL and a whole P-DATA-TF PDU (header included): True when it took the PDU (and then owns
every effect of it), False to leave it to pynetdicom. Must not raise."""

_lock = threading.Lock()
_installed: list[bool] = []


class UnfollowedPynetdicom(DicomNodeError):
    """This pynetdicom is not a release whose loops dicomnode.net.reactor follows."""


def install() -> None:
    """Patch pynetdicom's waits, and cache its UID conversions (:mod:`dicomnode.net.uids`) (idempotent,
    process-wide).

    Raises
    ------
    UnfollowedPynetdicom
        This pynetdicom is not one of :data:`FOLLOWS`, or its loops are not the code they ship.
    """
    with _lock:
        if _installed:
            return
        check_pynetdicom(pynetdicom.__version__)
        _patch()
        uids.install()
        _installed.append(True)


def check_pynetdicom(version: str) -> None:
    """Raise :class:`UnfollowedPynetdicom`, with what to do, unless pynetdicom ``version`` is one of
    :data:`FOLLOWS` and the functions the patch replaces are the code it was written from."""
    if not follows(version):
        raise UnfollowedPynetdicom(
            f"pynetdicom {version} is not a release whose loops dicomnode.net.reactor follows "
            f"({', '.join(FOLLOWS)}): install one of those (pyproject.toml pins pynetdicom>=3.0.1,<3.1), or "
            "compare the reactor's copies with this release's loops and add it to FOLLOWS")
    if followed_source_digest() != FOLLOWED_SOURCE:
        raise UnfollowedPynetdicom(
            f"pynetdicom {version}'s loops are not the code dicomnode.net.reactor was written from (changed "
            f"after its release, or installed without source): reinstall pynetdicom {version} from PyPI")


def follows(version: str) -> bool:
    """Whether pynetdicom ``version`` is a release whose loops the functions below copy."""
    return version in FOLLOWS


def followed_source_digest() -> str:
    """sha256 of the source of the pynetdicom functions the patch replaces or wraps ("" if unreadable)."""
    digest = hashlib.sha256()
    for function in _FOLLOWED:
        try:
            digest.update(inspect.getsource(function).encode())
        except (OSError, TypeError):
            return ""
    return digest.hexdigest()


def _patch() -> None:
    _dul_init = DULServiceProvider.__init__

    def dul_init(self: DULServiceProvider, *args: Any, **kwargs: Any) -> None:
        _dul_init(self, *args, **kwargs)
        self._wake_r, self._wake_w = socket.socketpair()  # type: ignore[attr-defined]
        self._wake_r.setblocking(False)  # type: ignore[attr-defined]
        self._wake_w.setblocking(False)  # type: ignore[attr-defined]
        self.to_user_queue = _UserQueue(self)
        self._answer_awaited = threading.Event()  # type: ignore[attr-defined]

    _receive_pdu = DULServiceProvider.receive_pdu

    def receive_pdu(self: DULServiceProvider, *args: Any, **kwargs: Any) -> Any:
        if not self._answer_awaited.is_set():  # type: ignore[attr-defined]
            self._answer_awaited.set()  # type: ignore[attr-defined]
            _wake(self)
        return _receive_pdu(self, *args, **kwargs)

    _send_pdu = DULServiceProvider.send_pdu

    def send_pdu(self: DULServiceProvider, primitive: Any) -> None:
        _send_pdu(self, primitive)
        _wake(self)

    _kill_dul = DULServiceProvider.kill_dul

    def kill_dul(self: DULServiceProvider) -> None:
        _kill_dul(self)
        _wake(self)

    _close = AssociationSocket.close

    def close(self: AssociationSocket) -> None:
        _close(self)  # queues Evt17 for the DUL, from whichever thread closes
        _wake(self.assoc.dul)

    _assoc_init = Association.__init__

    def assoc_init(self: Association, *args: Any, **kwargs: Any) -> None:
        _assoc_init(self, *args, **kwargs)
        self._reactor_poked = False  # type: ignore[attr-defined]
        self._reactor_checkpoint = _Checkpoint(self)

    Association.__init__ = assoc_init  # type: ignore[method-assign]
    Association.kill = _assoc_kill  # type: ignore[method-assign]
    Association._run_reactor = _assoc_run_reactor  # type: ignore[method-assign]
    DULServiceProvider.__init__ = dul_init  # type: ignore[method-assign]
    DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
    DULServiceProvider.receive_pdu = receive_pdu  # type: ignore[method-assign]
    DULServiceProvider.kill_dul = kill_dul  # type: ignore[method-assign]
    DULServiceProvider.stop_dul = _stop_dul  # type: ignore[method-assign]
    DULServiceProvider.run_reactor = _dul_run_reactor  # type: ignore[method-assign]
    DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]
    AssociationSocket.recv = _recv  # type: ignore[method-assign]
    AssociationSocket.close = close  # type: ignore[method-assign]


def set_p_data_hook(ae: AE, hook: PDataHook) -> None:
    """Offer each P-DATA-TF PDU of ``ae``'s established associations as acceptor to ``hook`` first.

    Raises
    ------
    UnfollowedPynetdicom
        As :func:`install`.
    """
    install()
    ae._reactor_p_data_hook = hook  # type: ignore[attr-defined]


def _wake(dul: DULServiceProvider) -> None:
    """Wake ``dul``'s thread from :func:`_idle_wait`; call after the change it is to see."""
    wake = getattr(dul, "_wake_w", None)
    with contextlib.suppress(OSError):  # full (already awake) or closed (finished)
        if wake is not None:
            wake.send(b"\0")


def _poke(assoc: Association) -> None:
    """Wake ``assoc``'s thread from :func:`_await_message` for one pass; call after the change it is to see."""
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        assoc._reactor_poked = True  # type: ignore[attr-defined]
        messages.not_empty.notify_all()


class _UserQueue(queue.Queue[Any]):
    """``DULServiceProvider.to_user_queue``: each primitive put for the user (the peer's A-RELEASE-RQ or
    A-ABORT, which the association thread looks for) wakes the association thread."""

    def __init__(self, dul: DULServiceProvider) -> None:
        super().__init__()
        self._dul = dul

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        _poke(self._dul.assoc)


def _idle_wait(dul: DULServiceProvider) -> None:
    """Until the peer sends, the user queues a primitive, or :data:`IDLE_WAKE` passes."""
    wake = dul._wake_r  # type: ignore[attr-defined]
    raw = getattr(dul.socket, "socket", None)
    if isinstance(raw, ssl.SSLSocket) and raw.pending():
        return  # decrypted bytes already buffered: select would not see them
    waitables = [wake] if raw is None or raw.fileno() < 0 else [wake, raw]
    try:
        ready, _, _ = select.select(waitables, [], [], IDLE_WAKE)
    except (OSError, ValueError):  # the socket closed meanwhile: the pass below finds out
        time.sleep(dul._run_loop_delay)
        return
    if wake in ready:
        with contextlib.suppress(OSError):
            wake.recv(4096)


def _dul_run_reactor(self: DULServiceProvider) -> None:
    """pynetdicom 3.0's ``DULServiceProvider.run_reactor``, with :func:`_idle_wait` for its sleep; an
    exception in a state machine action (pynetdicom's DIMSE decoding of a malformed message) ends the
    association as one while reading does, instead of killing the thread with the connection left open."""
    self._idle_timer.start()
    sleep = False
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                _idle_wait(self)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif _answer_not_awaited(self):
                    continue
                elif self._is_transport_event():
                    self._idle_timer.restart()
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    sleep = True
                    continue
                self.state_machine.do_action(event)
            except Exception as exc:
                _give_up(self, exc)
                return
            sleep = False
    finally:
        for end in (self._wake_r, self._wake_w):  # type: ignore[attr-defined]
            end.close()


def _answer_not_awaited(dul: DULServiceProvider) -> bool:
    """Whether a requestor's DUL must not read the answer to its A-ASSOCIATE-RQ yet; waits a little if so.

    pynetdicom's requesting thread, once the connection is made, checks that it is still open and only
    then waits for the answer (``ACSE._negotiate_as_requestor``). A peer that rejects at once and closes
    (the node's own SCP, for an unknown AE title) lets a DUL that wakes at once read the A-ASSOCIATE-RJ and
    close the connection before that check, which then reports an abort: the rejection and its reason are
    lost (one association in ten, beside other work, before this). Until the requesting thread waits for
    the answer (:meth:`~pynetdicom.dul.DULServiceProvider.receive_pdu`), or for :data:`ANSWER_GATE` seconds
    at most, the DUL leaves the socket unread in Sta5 (awaiting A-ASSOCIATE-AC or -RJ).
    """
    if dul._answer_awaited.is_set() or dul.state_machine.current_state != "Sta5":  # type: ignore[attr-defined]
        return False
    gate = getattr(dul, "_answer_gate", None)
    if gate is None:
        gate = dul._answer_gate = time.monotonic() + ANSWER_GATE  # type: ignore[attr-defined]
    if time.monotonic() >= gate:
        return False
    dul._answer_awaited.wait(IDLE_WAKE)  # type: ignore[attr-defined]
    return True


def _give_up(dul: DULServiceProvider, exc: Exception) -> None:
    """pynetdicom's own way out of its loop on an exception: A-ABORT, then the association ends; and
    then (:func:`_close_after_exception`) the connection's close, which pynetdicom leaves out."""
    _dul_log.error("Exception in DUL.run(), aborting association")
    _dul_log.exception(exc)
    abort_pdu = A_ABORT_RQ()
    abort_pdu.source = 0x02
    abort_pdu.reason_diagnostic = 0x00
    if dul.socket is not None and dul.socket.socket is not None:
        dul.socket.send(abort_pdu.encode())
    dul.assoc.is_aborted = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    _poke(dul.assoc)
    dul._kill_thread = True
    _close_after_exception(dul)


def _close_after_exception(dul: DULServiceProvider) -> None:
    """Where pynetdicom's loop gives up on an exception, it leaves the connection open and never signals
    its close (EVT_CONN_CLOSE), so a handler of that event never cleans up after the association (the
    node's: the file of a dataset cut off while it arrived). Close it, and signal the close, as the state
    machine does when a connection ends."""
    sock = dul.socket
    if sock is None or sock.socket is None:
        return
    remote = dul.assoc.acceptor if dul.assoc.is_requestor else dul.assoc.requestor
    sock.close()
    address = remote.address_info.as_tuple if remote.address_info is not None else None
    evt.trigger(dul.assoc, evt.EVT_CONN_CLOSE, {"address": address})


class _Checkpoint(threading.Event):
    """``Association._reactor_checkpoint``: a thread that pauses the reactor (to send a request on the
    association itself: every ``send_c_*`` of a requestor) clears it and waits until the reactor has
    stopped at it (:func:`_pause`); clearing it wakes the reactor from :func:`_await_message` to do so."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self.set()  # as pynetdicom's own: running
        self._assoc = assoc

    def clear(self) -> None:
        super().clear()
        _poke(self._assoc)


def _await_message(assoc: Association) -> None:
    """Until a decoded DIMSE message is queued, :func:`_poke` is called, or :data:`IDLE_WAKE` passes (what
    woke it stays for the pass to find). The flag and the queue are read, and the wait begins, under the
    lock that a put or a poke takes to change them: none is lost between the look and the wait."""
    messages = assoc.dimse.msg_queue
    with messages.not_empty:  # holds the queue's own lock: its qsize() would wait on it forever
        idle = not messages.queue and not assoc._reactor_poked  # type: ignore[attr-defined]
        if idle and assoc._reactor_checkpoint.is_set():
            messages.not_empty.wait(IDLE_WAKE)
        assoc._reactor_poked = False  # type: ignore[attr-defined]


def _pause(assoc: Association) -> None:
    """pynetdicom's checkpoint (``_is_paused``, then ``_reactor_checkpoint.wait()``), returning only while the
    checkpoint is set after the reactor has said it runs.

    A request clears the checkpoint, then reads ``_is_paused``; pynetdicom's reactor, released by the end
    of the request before, set ``_is_paused = False`` only once it ran again: if the next request came
    first, it read the stale True, went on, and the reactor then took its response off the DIMSE queue as
    an unexpected message (the request waited out its DIMSE timeout). Here the reactor says it runs, then
    reads the checkpoint: of the two that each write before they read, one sees the other's write, so
    either the request waits for this pause or the reactor pauses again.
    """
    while True:
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        if assoc._reactor_checkpoint.is_set():
            return


def _assoc_run_reactor(self: Association) -> None:
    """pynetdicom 3.0's ``Association._run_reactor``, with :func:`_await_message` for its 1 ms sleep and
    :func:`_pause` for its checkpoint."""
    self._is_paused = False
    while not self._kill:
        _await_message(self)
        _pause(self)
        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)  # type: ignore[arg-type]
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            _assoc_log.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return
        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            _assoc_log.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return
        if not self.dul.is_alive():
            self.kill()
            return
        if self.dul.idle_timer_expired():
            _assoc_log.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def _stop_dul(self: DULServiceProvider) -> bool:
    """pynetdicom 3.0's ``DULServiceProvider.stop_dul``, waking the reactor it stops: its flag alone
    waited out an idle wake, for every association's end, on each side."""
    if self.state_machine.current_state == "Sta1":
        self._kill_thread = True
        _wake(self)
        while self.is_alive():
            time.sleep(self._run_loop_delay)
        return True
    return False


def _assoc_kill(self: Association) -> None:
    """pynetdicom 3.0's ``Association.kill``, waking the association's thread to see ``_kill`` and waiting
    for the DUL thread's end by joining it: pynetdicom's 10 ms sleeps held the association (and its slot
    in ``maximum_associations``) up to 10 ms past its DUL's end, each time."""
    self._reactor_checkpoint.set()
    self._kill = True
    self.is_established = False
    self._is_paused = True
    _poke(self)
    while self.dul.is_alive() and not self.dul.stop_dul():
        self.dul.join(0.01)


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: up to ``nr_bytes``, fewer only when the peer closed; one buffer."""
    raw = self.socket
    assert raw is not None
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    nr_read = 0
    while nr_read < nr_bytes:
        got = raw.recv_into(view[nr_read:], min(nr_bytes - nr_read, RECV_CHUNK))
        if not got:
            del view
            del buffer[nr_read:]
            return buffer
        nr_read += got
    return buffer


def _read_pdu_data(self: DULServiceProvider) -> None:
    """pynetdicom 3.0's ``DULServiceProvider._read_pdu_data``, offering a P-DATA-TF PDU received on an
    established association to the AE's :func:`set_p_data_hook` before decoding it."""
    sock = self.socket
    assert sock is not None
    try:
        bytestream = sock.recv(6)
    except (OSError, TimeoutError) as exc:
        _dul_log.error("Connection closed before the entire PDU was received")
        _dul_log.exception(exc)
        self.event_queue.put("Evt17")
        return
    try:
        pdu_type, _, pdu_length = struct.unpack(">BBL", bytestream)
    except struct.error:
        self.event_queue.put("Evt17")
        return
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        _dul_log.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return
    try:
        bytestream += sock.recv(pdu_length)
    except (OSError, TimeoutError) as exc:
        _dul_log.error("Connection closed before the entire PDU was received")
        _dul_log.exception(exc)
        self.event_queue.put("Evt17")
        return
    if len(bytestream) != 6 + pdu_length:
        _dul_log.error(f"The received PDU is shorter than expected ({len(bytestream)} of "
                       f"{6 + pdu_length} bytes received)")
        self.event_queue.put("Evt17")
        return
    if pdu_type == P_DATA_TF and _p_data_hooked(self, bytestream):
        return
    try:
        pdu, event = self._decode_pdu(bytestream)
        self.event_queue.put(event)
    except Exception as exc:
        _dul_log.error("Unable to decode the received PDU data")
        _dul_log.exception(exc)
        self.event_queue.put("Evt19")
        return
    self._recv_pdu.put(pdu)


def _p_data_hooked(dul: DULServiceProvider, pdu: bytearray) -> bool:
    hook: PDataHook | None = getattr(dul.assoc.ae, "_reactor_p_data_hook", None)
    return (hook is not None and dul.assoc.is_acceptor and dul.state_machine.current_state == "Sta6"
            and hook(dul, pdu))
