"""An association server that no single client can stall.

pynetdicom's server wraps TLS sockets in its accept loop and counts a connection against
``maximum_associations`` from the moment it is accepted. Here the accept loop only accepts: the TLS
handshake (bounded by ``tls_handshake_timeout_seconds``) and the wait for the peer's first PDU (bounded
by ``first_pdu_timeout_seconds``) run in the connection's own thread, and the association, which is
what takes a slot, is created only once a whole A-ASSOCIATE-RQ PDU has arrived. A connection that sends
nothing is closed without ever holding a slot a known peer needs, and reported to ``on_silent`` (audited,
per burst).

With ``share_port`` (the ``share_port`` setting), several receiving processes bind the same address
(SO_REUSEPORT) and the kernel hands each new connection to one of them.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.log import extra

log = logging.getLogger(__name__)

_PDU_HEADER = 6  # PS3.8 9.3.1: type, reserved, 4-byte length
_PEEK_LIMIT = 65536  # a longer A-ASSOCIATE-RQ is passed on once this much of it has arrived
_PEEK_INTERVAL = 0.02


def _whole_request_arrived(sock: socket.socket, deadline: float) -> bool | None:
    """Wait (until ``deadline``) for the first PDU to arrive whole: True when it did, False when the
    deadline passed first, None when the peer closed the connection without asking for anything."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK through TLS: the first bytes must do
            return sock.pending() > 0 or bool(select.select([sock], [], [], remaining)[0])
        sock.settimeout(remaining)
        try:
            data = sock.recv(_PEEK_LIMIT, socket.MSG_PEEK)
        except TimeoutError:
            return False
        if not data:
            return None  # closed before asking for anything (a port probe)
        if len(data) >= _PDU_HEADER:
            needed = _PDU_HEADER + int.from_bytes(data[2:6], "big")
            if len(data) >= min(needed, _PEEK_LIMIT):
                return True
        time.sleep(_PEEK_INTERVAL)  # part of the PDU is in: poll for the rest


class GuardedServer(ThreadedAssociationServer):
    """A :class:`ThreadedAssociationServer` whose accept loop never waits on a client."""

    def __init__(self, *args: Any, first_pdu_timeout: float, share_port: bool = False,
                 on_silent: Callable[[str], None] = lambda address: None, **kwargs: Any) -> None:
        self.first_pdu_timeout = first_pdu_timeout
        self.share_port = share_port
        self.on_silent = on_silent
        super().__init__(*args, **kwargs)

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
        """In the connection's thread: TLS handshake, wait for the A-ASSOCIATE-RQ, then the association."""
        sock: socket.socket = request
        deadline = time.monotonic() + self.first_pdu_timeout
        try:
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_side=True)  # bounded and audited
            previous = sock.gettimeout()
            arrived = _whole_request_arrived(sock, deadline)
            if not arrived:
                if arrived is False:
                    log.warning("connection closed: no A-ASSOCIATE-RQ within first_pdu_timeout_seconds",
                                extra=extra(stage="receive"))
                    self.on_silent(str(client_address[0]))
                self.shutdown_request(sock)
                return
            sock.settimeout(previous)
        except (OSError, ValueError):
            self.shutdown_request(sock)
            return
        super().process_request_thread(sock, client_address)


def start_guarded_server(ae: AE, address: tuple[str, int], *, handlers: list[Any], first_pdu_timeout: float,
                         ssl_context: ssl.SSLContext | None = None, share_port: bool = False,
                         on_silent: Callable[[str], None] = lambda address: None) -> GuardedServer:
    """Start a :class:`GuardedServer` for ``ae`` in a daemon thread, as ``AE.start_server(block=False)`` does;
    ``on_silent(address)`` hears of each connection closed for sending no A-ASSOCIATE-RQ in time."""
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=handlers, server_class=GuardedServer,
                            first_pdu_timeout=first_pdu_timeout, share_port=share_port, on_silent=on_silent)
    assert isinstance(server, GuardedServer)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
