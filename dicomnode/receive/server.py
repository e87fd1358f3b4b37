"""An association server that no single client can stall.

pynetdicom's server wraps TLS sockets in its accept loop and counts a connection against
``maximum_associations`` from the moment its association starts. Here the accept loop only accepts: the
TLS handshake (bounded by ``tls_handshake_timeout_seconds``) and the reading of the peer's first PDU run
in the connection's own thread, and the association, which is what takes a slot, is created only once
that PDU, the A-ASSOCIATE-RQ, has arrived whole: read here (within ``first_pdu_timeout_seconds`` of the
connection, whatever its size) and replayed to pynetdicom. A connection that has not sent it whole in
time is closed without ever holding a slot a known peer needs, and reported to ``on_silent``; one whose
header claims more than ``max_associate_rq_bytes`` is answered A-ASSOCIATE-RJ and closed at once, and
reported to ``on_oversized`` (both audited, per burst). PS3.8 9.3.2 bounds no A-ASSOCIATE-RQ; a real
one is a few KiB (128 presentation contexts, each with every transfer syntax: about 140 KB).

With ``share_port`` (the ``share_port`` setting), several receiving processes bind the same address
(SO_REUSEPORT) and the kernel hands each new connection to one of them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicomnode.log import extra

log = logging.getLogger(__name__)

_PDU_HEADER = 6  # PS3.8 9.3.1: type, reserved, 4-byte length
_CHUNK = 65536
_LINGER = 1.0  # seconds a refused peer is given to read the A-ASSOCIATE-RJ and close
# PS3.8 9.3.4: A-ASSOCIATE-RJ, rejected-permanent (1), by the DICOM UL service-user (1), no reason given (1)
_REJECT_TOO_LARGE = bytes([0x03, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x01, 0x01, 0x01])


def _drain(sock: socket.socket, deadline: float) -> None:
    """Discard what the peer still sends until it closes, or until ``deadline`` (PS3.8 9.2.2: after an
    A-ASSOCIATE-RJ the requestor closes the connection; the acceptor's ARTIM timer bounds the wait), so
    that it reads the A-ASSOCIATE-RJ before the close, not a reset."""
    scratch = bytearray(65536)
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv_into(scratch):
                return
        except TimeoutError:
            return


@dataclass(frozen=True)
class NotArrived:
    """Why no first PDU was read: the deadline passed first (``late``), its header claims ``claimed``
    bytes, more than the limit, or (neither) the peer closed the connection."""

    late: bool = False
    claimed: int = 0


def _receive(sock: socket.socket, count: int, deadline: float) -> bytearray | NotArrived:
    """``count`` bytes from ``sock`` by ``deadline``, gathered as they arrive: a size only claimed costs
    no memory."""
    data = bytearray()
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return NotArrived(late=True)
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(count - len(data), _CHUNK))
        except TimeoutError:
            return NotArrived(late=True)
        if not chunk:
            return NotArrived()
        data += chunk
    return data


def read_first_pdu(sock: socket.socket, deadline: float, limit: int) -> bytearray | NotArrived:
    """The peer's first PDU, read whole by ``deadline``; a header claiming more than ``limit`` bytes
    (header included) is believed, and nothing more is read."""
    header = _receive(sock, _PDU_HEADER, deadline)
    if isinstance(header, NotArrived):
        return header
    length = _PDU_HEADER + int.from_bytes(header[2:6], "big")
    if length > limit:
        return NotArrived(claimed=length)
    body = _receive(sock, length - _PDU_HEADER, deadline)
    return body if isinstance(body, NotArrived) else header + body


class _Replaying(AssociationSocket):
    """pynetdicom's socket of an association whose first PDU the server has already read: pynetdicom
    reads that PDU from here first, then the connection."""

    _first: bytearray

    @classmethod
    def adopt(cls, sock: AssociationSocket, first_pdu: bytearray) -> None:
        """Make the socket pynetdicom made for a new association (which has queued the connection's
        event already) replay ``first_pdu``."""
        sock.__class__ = cls
        assert isinstance(sock, cls)
        sock._first = first_pdu

    @property
    def ready(self) -> bool:
        return bool(self._first) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        if not self._first:
            return super().recv(nr_bytes)
        head = self._first[:nr_bytes]
        del self._first[:nr_bytes]
        return head + super().recv(nr_bytes - len(head)) if len(head) < nr_bytes else head


class _SharedContexts(list[PresentationContext]):
    """The server's supported presentation contexts, which every association shares.

    pynetdicom deep-copies the server's contexts into each new association (``_create_association``): for
    every storage SOP class with every transfer syntax that is 7,695 UIDs built and validated again, 46 ms
    with the GIL held per association (measured here; about an eighth of four associations' ingest time
    for 100 instances each). Negotiation (``negotiate_as_acceptor``) only reads them and the node's
    handlers never change them, so each association gets a new list of the same objects.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return list(self)


class _Handler(RequestHandler):
    """pynetdicom's request handler, for a connection whose A-ASSOCIATE-RQ has arrived (``first_pdu``)."""

    def __init__(self, request: socket.socket, client_address: Any, server: GuardedServer,
                 first_pdu: bytearray) -> None:
        self.first_pdu = first_pdu
        super().__init__(request, client_address, server)

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assert assoc.dul.socket is not None
        _Replaying.adopt(assoc.dul.socket, self.first_pdu)
        # dicomnode.net.reactor's wake-up socket: the DUL reads the PDU now, not at its next idle wake (the
        # peer sends nothing more until it is answered)
        wake = getattr(assoc.dul, "_wake_w", None)
        if wake is not None:
            with contextlib.suppress(OSError):
                wake.send(b"\0")
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """A :class:`ThreadedAssociationServer` whose accept loop never waits on a client, and whose
    associations start only once their A-ASSOCIATE-RQ has arrived whole."""

    # socketserver's listen backlog is 5: a burst of connections (a PACS opening several associations, idle
    # scanners) overflows it while the accept loop is busy, and the kernel drops the next SYN, which the
    # client retries only after a second. The kernel's own cap (net.core.somaxconn) bounds this one.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, *args: Any, first_pdu_timeout: float, max_request_bytes: int, share_port: bool = False,
                 on_silent: Callable[[str], None] = lambda address: None,
                 on_oversized: Callable[[str, int], None] = lambda address, size: None, **kwargs: Any) -> None:
        self.first_pdu_timeout = first_pdu_timeout
        self.max_request_bytes = max_request_bytes
        self.share_port = share_port
        self.on_silent = on_silent
        self.on_oversized = on_oversized
        super().__init__(*args, **kwargs)
        self.contexts = _SharedContexts(self.contexts)

    def server_bind(self) -> None:
        """Bind as pynetdicom does; with ``share_port``, beside other processes bound the same way."""
        if self.share_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only; the TLS handshake happens in the connection's thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """In the connection's thread: TLS handshake, read the A-ASSOCIATE-RQ, then the association."""
        sock: socket.socket = request
        deadline = time.monotonic() + self.first_pdu_timeout
        try:
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_side=True)  # bounded and audited
            previous = sock.gettimeout()
            first = read_first_pdu(sock, deadline, self.max_request_bytes)
            if isinstance(first, NotArrived):
                self._turn_away(sock, first, str(client_address[0]))
                return
            sock.settimeout(previous)
        except (OSError, ValueError):
            self.shutdown_request(sock)
            return
        try:  # as pynetdicom's ThreadedAssociationServer, with the PDU already read
            _Handler(sock, client_address, self, first)
        except Exception:
            self.handle_error(sock, client_address)
            self.shutdown_request(sock)

    def _turn_away(self, sock: socket.socket, why: NotArrived, address: str) -> None:
        """Close a connection whose A-ASSOCIATE-RQ did not arrive whole in time, or claims to be too large
        (after an A-ASSOCIATE-RJ); report it (a peer that closed first is not reported)."""
        if why.claimed:
            log.warning("association rejected: A-ASSOCIATE-RQ larger than max_associate_rq_bytes",
                        extra=extra(stage="receive"))
            with contextlib.suppress(OSError):
                sock.settimeout(_LINGER)
                sock.sendall(_REJECT_TOO_LARGE)
                _drain(sock, time.monotonic() + _LINGER)
            self.on_oversized(address, why.claimed)
        elif why.late:
            log.warning("connection closed: no whole A-ASSOCIATE-RQ within first_pdu_timeout_seconds",
                        extra=extra(stage="receive"))
            self.on_silent(address)
        self.shutdown_request(sock)


def start_guarded_server(ae: AE, address: tuple[str, int], *, handlers: list[Any], first_pdu_timeout: float,
                         max_request_bytes: int, ssl_context: ssl.SSLContext | None = None, share_port: bool = False,
                         on_silent: Callable[[str], None] = lambda address: None,
                         on_oversized: Callable[[str, int], None] = lambda address, size: None) -> GuardedServer:
    """Start a :class:`GuardedServer` for ``ae`` in a daemon thread, as ``AE.start_server(block=False)`` does;
    ``on_silent(address)`` hears of each connection closed for sending no whole A-ASSOCIATE-RQ in time,
    ``on_oversized(address, size)`` of each refused for claiming more than ``max_request_bytes``."""
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=handlers, server_class=GuardedServer,
                            first_pdu_timeout=first_pdu_timeout, max_request_bytes=max_request_bytes,
                            share_port=share_port, on_silent=on_silent, on_oversized=on_oversized)
    assert isinstance(server, GuardedServer)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
