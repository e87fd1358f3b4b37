"""Who may associate: the called-AE and calling-AE checks, pure and unit-testable."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from dicomnode.settings import Peer

# A-ASSOCIATE-RJ diagnostics for source 0x01, DICOM service user (PS3.8 9.3.4)
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07


@dataclass(frozen=True)
class Decision:
    accepted: bool
    diagnostic: int = 0
    reason: str = ""


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


def decide(
    *, own_ae: str, called_ae: str, calling_ae: str, address: str, peers: tuple[Peer, ...], require_known: bool
) -> Decision:
    """Accept or reject an association request.

    The called AE title must be the node's own. With ``require_known``, the calling AE title must be one
    of ``peers`` and the caller's address must match that peer's host (an address, a network in CIDR
    form, or ``*``).
    """
    if called_ae.strip() != own_ae:
        return Decision(False, CALLED_AE_NOT_RECOGNISED, f"called AE title {called_ae.strip()!r} is not {own_ae!r}")
    if not require_known:
        return Decision(True)
    calling = calling_ae.strip()
    named = [p for p in peers if p.ae_title == calling]
    if not named:
        return Decision(False, CALLING_AE_NOT_RECOGNISED, f"calling AE title {calling!r} is not a known peer")
    if not any(_host_matches(p.host, address) for p in named):
        return Decision(False, CALLING_AE_NOT_RECOGNISED,
                        f"calling AE title {calling!r} is known, but not from address {address}")
    return Decision(True)
