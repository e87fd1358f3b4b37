"""Who may associate: the called-AE, calling-AE, address and client-certificate checks, pure and
unit-testable (the caller's certificate comes in as facts, :class:`~dicomnode.net.tls.ClientCertificate`)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from dicomnode.net.tls import ClientCertificate
from dicomnode.settings import Peer

# A-ASSOCIATE-RJ diagnostics for source 0x01, DICOM service user (PS3.8 9.3.4)
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07


@dataclass(frozen=True)
class Decision:
    """Accepted, or rejected with the A-ASSOCIATE-RJ diagnostic, a reason (for log and audit) and the
    kind of rejection (``called_ae``, ``calling_ae``, ``address``, ``certificate``: part of the audit
    burst's key)."""

    accepted: bool
    diagnostic: int = 0
    reason: str = ""
    kind: str = ""


def _host_matches(peer_host: str, address: str) -> bool:
    if peer_host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(peer_host, strict=False)
    except ValueError:
        pass
    try:  # a host name: compare with what it resolves to
        return address in {info[4][0] for info in socket.getaddrinfo(peer_host, None)}
    except OSError:
        return False


def bound(peer: Peer) -> bool:
    """Whether ``peer`` names the client certificate it must present."""
    return peer.tls_subject_cn is not None or peer.tls_sha256 is not None


def _certificate_matches(peer: Peer, certificate: ClientCertificate | None) -> bool:
    if not bound(peer):
        return True
    if certificate is None:
        return False
    return ((peer.tls_subject_cn is None or certificate.subject_cn == peer.tls_subject_cn)
            and (peer.tls_sha256 is None or certificate.sha256 == peer.tls_sha256))


def decide(
    *, own_ae: str, called_ae: str, calling_ae: str, address: str, peers: tuple[Peer, ...], require_known: bool,
    certificate: ClientCertificate | None = None,
) -> Decision:
    """Accept or reject an association request.

    The called AE title must be the node's own. With ``require_known``, the calling AE title must be one
    of ``peers`` and the caller's address must match that peer's host (an address, a network in CIDR
    form, or ``*``). A peer that names a client certificate (``tls_subject_cn``, ``tls_sha256``) is
    bound to it, whether or not ``require_known``: its AE title is accepted only over TLS, from its
    host, with ``certificate`` (the client's, None when it presented none) matching what it names.
    Where several peers share the calling AE title, one of them that matches is enough.
    """
    if called_ae.strip() != own_ae:
        return Decision(False, CALLED_AE_NOT_RECOGNISED, f"called AE title {called_ae.strip()!r} is not {own_ae!r}",
                        "called_ae")
    calling = calling_ae.strip()
    named = [p for p in peers if p.ae_title == calling]
    if not require_known and not any(bound(p) for p in named):
        return Decision(True)
    if not named:
        return Decision(False, CALLING_AE_NOT_RECOGNISED, f"calling AE title {calling!r} is not a known peer",
                        "calling_ae")
    at_address = [p for p in named if _host_matches(p.host, address)]
    if not at_address:
        return Decision(False, CALLING_AE_NOT_RECOGNISED,
                        f"calling AE title {calling!r} is known, but not from address {address}", "address")
    if not any(_certificate_matches(p, certificate) for p in at_address):
        presented = "no client certificate" if certificate is None else "another client certificate"
        return Decision(False, CALLING_AE_NOT_RECOGNISED,
                        f"calling AE title {calling!r} is bound to a TLS client certificate; {presented} was "
                        "presented", "certificate")
    return Decision(True)
