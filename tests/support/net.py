"""Loopback helpers: free ports and polling (never fixed sleeps)."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


# Ports handed to servers come from below Linux's ephemeral range (32768-60999): a port the kernel
# picked for bind(0) is soon picked again, for another test run's server or for an outgoing connection.
_PORTS = (20000, 32768)
_pick = random.SystemRandom()  # which port, not test data: nothing to reproduce


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    for _ in range(200):
        port = _pick.randrange(*_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # that range is full: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T], *, timeout: float, msg: str, interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``msg`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the peer may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {msg}" + (f" (last error: {last_error})" if last_error else ""))


def holds_for(predicate: Callable[[], bool], *, seconds: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` for ``seconds``; True when it held every time (for "nothing happens" checks)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(interval)
    return bool(predicate())


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def listen_backlog(port: int) -> int:
    """The accept queue length the kernel gives the socket listening on loopback ``port`` (the Send-Q column
    of ``ss`` for a listening socket; iproute2, installed with the peers)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert rows, f"nothing listens on port {port}"
    return int(rows[0][2])
