"""DICOM TLS (PS3.15 B.9 / BCP 195): SSL contexts for the SCP and the SCU, from the settings.

TLS 1.2 or newer only. With ``tls_ca_file`` the SCP requires and verifies client certificates (mutual
TLS); the SCU always verifies the PACS' certificate against ``tls_ca_file`` (or the system store).
:func:`client_certificate` tells who a verified client is (subject CN, SHA-256 fingerprint), for the
peers bound to a certificate (``tls_subject_cn``, ``tls_sha256``).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomnode.log import extra
from dicomnode.settings import Settings

log = logging.getLogger(__name__)


class AuditingServerContext(ssl.SSLContext):
    """A server context that bounds the handshake in time and reports each failure to ``on_failure``.

    The receiver wraps each accepted socket in the connection's own thread (``receive/server.py``);
    this makes failed handshakes visible (audit security alert) and cuts off a client that never
    completes its handshake.
    """

    on_failure: Callable[[str, str], None] = staticmethod(lambda address, reason: None)
    handshake_timeout: float = 5.0

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        try:
            address = str(sock.getpeername()[0])
        except OSError:
            address = "?"
        previous = sock.gettimeout()
        sock.settimeout(self.handshake_timeout)
        try:
            wrapped = super().wrap_socket(sock, *args, **kwargs)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning("TLS handshake failed: %s", reason, extra=extra(stage="receive"))
            self.on_failure(address, str(reason))
            sock.close()
            raise
        wrapped.settimeout(previous)
        return wrapped


@dataclass(frozen=True)
class ClientCertificate:
    """The certificate a TLS client presented (and the handshake verified): the subject's common name
    (None unless it has exactly one) and the SHA-256 fingerprint of the DER certificate (lower-case hex)."""

    subject_cn: str | None
    sha256: str

    @classmethod
    def from_der(cls, der: bytes) -> ClientCertificate:
        """Read a DER certificate (parsed by ``cryptography``).

        Raises
        ------
        ValueError
            ``der`` is not a certificate.
        """
        from cryptography import x509  # only where a client certificate is read
        from cryptography.x509.oid import NameOID

        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = names[0].value if len(names) == 1 else None  # two CNs name nobody exactly
        return cls(cn if isinstance(cn, str) else None, hashlib.sha256(der).hexdigest())


def client_certificate(sock: Any) -> ClientCertificate | None:
    """The certificate the client presented on ``sock``; None on a plain socket, or where it presented none."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        der = sock.getpeercert(binary_form=True)
    except (OSError, ValueError):  # closed meanwhile, or the handshake never finished
        return None
    return ClientCertificate.from_der(der) if der else None


def _base(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def server_context(settings: Settings, on_failure: Callable[[str, str], None]) -> ssl.SSLContext:
    """The SCP's context: our certificate; client certificates required when ``tls_ca_file`` is set."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ValueError("tls_port needs tls_cert_file and tls_key_file")
    context = _base(AuditingServerContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_ca_file is not None:
        context.load_verify_locations(settings.tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    context.on_failure = on_failure  # type: ignore[attr-defined]
    context.handshake_timeout = settings.tls_handshake_timeout_seconds  # type: ignore[attr-defined]
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """The SCU's context: verify the peer's certificate; present ours when we have one."""
    context = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if settings.tls_ca_file is not None:
        context.load_verify_locations(settings.tls_ca_file)
    else:
        context.load_default_certs()
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context
