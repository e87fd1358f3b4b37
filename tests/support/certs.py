"""Throwaway X.509 certificates for the TLS tests, made at run time with the openssl command."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.peers import require


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
