"""A recording TCP proxy on loopback: forwards a client to a server and keeps every byte the server got."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Recording:
    """The proxy's port, and the bytes its clients sent towards the server."""

    port: int
    to_server: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> bytes:
        with self.lock:
            return bytes(self.to_server)


def pipe(src: socket.socket, dst: socket.socket, record: Recording | None = None) -> None:
    """Copy ``src`` to ``dst`` until either closes (keeping the bytes in ``record``), then close both."""
    try:
        while data := src.recv(65536):
            if record is not None:
                with record.lock:
                    record.to_server.extend(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextlib.contextmanager
def recording_proxy(target_port: int) -> Iterator[Recording]:
    """Forward connections on a free loopback port to ``127.0.0.1:target_port``, recording client bytes."""
    listener = socket.create_server(("127.0.0.1", 0))
    recording = Recording(listener.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", target_port))
            except OSError:  # the server is not up yet: the client retries
                client.close()
                continue
            threading.Thread(target=pipe, args=(client, upstream, recording), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield recording
    finally:
        listener.close()
        thread.join(5)
