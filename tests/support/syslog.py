"""A syslog receiver on loopback (the Audit Record Repository in tests): TCP with RFC 6587 octet counting,
optionally TLS (RFC 5425), or UDP. Parses each message's RFC 5424 header."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from dataclasses import dataclass, field

HEADER = re.compile(rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
                    rb"(?P<msgid>\S+) (?P<sd>-|\[.*?\]) (?P<msg>.*)$", re.DOTALL)
BOM = b"\xef\xbb\xbf"


@dataclass
class Received:
    pri: int
    timestamp: str
    app: str
    msgid: str
    xml: bytes


def parse(message: bytes) -> Received:
    match = HEADER.match(message)
    if match is None:
        raise AssertionError(f"not an RFC 5424 message: {message[:120]!r}")
    msg = match["msg"]
    if not msg.startswith(BOM):
        raise AssertionError("MSG must be UTF-8 with a BOM (RFC 5424 6.4)")
    return Received(int(match["pri"]), match["ts"].decode(), match["app"].decode(), match["msgid"].decode(),
                    msg[len(BOM):])


@dataclass
class SyslogReceiver:
    port: int
    protocol: str = "tcp"  # tcp, tls or udp
    tls_context: ssl.SSLContext | None = None
    messages: list[Received] = field(default_factory=list)
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> SyslogReceiver:
        kind = socket.SOCK_DGRAM if self.protocol == "udp" else socket.SOCK_STREAM
        self._sock = socket.socket(socket.AF_INET, kind)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        if kind == socket.SOCK_STREAM:
            self._sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                if self.protocol == "udp":
                    data, _ = self._sock.recvfrom(65535)
                    self.messages.append(parse(data))
                    continue
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._read_stream, args=(conn,), daemon=True).start()

    def _read_stream(self, conn: socket.socket) -> None:
        if self.tls_context is not None:
            try:
                conn = self.tls_context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                return
        buffer = b""
        with conn:
            conn.settimeout(0.5)
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length_text, rest = buffer.split(b" ", 1)
                    length = int(length_text)  # octet counting: "LEN SP MSG"
                    if len(rest) < length:
                        break
                    self.messages.append(parse(rest[:length]))
                    buffer = rest[length:]
