"""Throwaway X.509 certificates for the TLS tests, made at run time with the openssl command."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.peers import require
from tests.support.proxy import pipe


@dataclass(frozen=True)
class KeyPair:
    key: Path
    cert: Path


def _openssl(*args: str) -> None:
    subprocess.run([require("openssl"), *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> KeyPair:
    folder.mkdir(parents=True, exist_ok=True)
    ca = KeyPair(folder / f"{name}.key", folder / f"{name}.pem")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(ca.key), "-out", str(ca.cert))
    return ca


def make_cert(ca: KeyPair, folder: Path, name: str) -> KeyPair:
    """A leaf certificate for ``name`` signed by ``ca``, valid for 127.0.0.1 and localhost."""
    pair = KeyPair(folder / f"{name}.key", folder / f"{name}.pem")
    csr = folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(pair.key),
             "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(pair.cert))
    return pair


def sha256_fingerprint(pair: KeyPair) -> str:
    """The SHA-256 fingerprint of ``pair``'s certificate as openssl prints it (upper-case hex, colons)."""
    done = subprocess.run([require("openssl"), "x509", "-in", str(pair.cert), "-noout", "-fingerprint", "-sha256"],
                          check=True, capture_output=True, text=True, timeout=60)
    return done.stdout.strip().split("=", 1)[1]


@contextmanager
def tls_proxy(target_port: int, pair: KeyPair) -> Iterator[int]:
    """A TLS-terminating proxy on loopback in front of ``127.0.0.1:target_port`` (as nginx would stand in
    front of an archive); yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                client = context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):  # an untrusting client aborts the handshake
                raw.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", target_port))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=10)
