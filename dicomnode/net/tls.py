"""DICOM TLS (PS3.15 B.9 / BCP 195): SSL contexts for the SCP and the SCU, from the settings.

TLS 1.2 or newer only. With ``tls_ca_file`` the SCP requires and verifies client certificates (mutual
TLS); the SCU always verifies the PACS' certificate against ``tls_ca_file`` (or the system store).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

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
            log.warning("TLS handshake failed: %s", reason)
            self.on_failure(address, str(reason))
            sock.close()
            raise
        wrapped.settimeout(previous)
        return wrapped


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
