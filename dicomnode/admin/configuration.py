"""Peers, destinations and rules changed from the admin app (API and console alike): one function per
action, each in its own transaction, audited with the user and address by :mod:`dicomnode.config_store`;
and the C-ECHO that tests a peer or a destination.
"""

from __future__ import annotations

import time

from fastapi import Request

from dicomnode import config_store
from dicomnode.admin.deps import AdminContext, client_address, state
from dicomnode.admin.schemas import EchoResult
from dicomnode.db import session_scope
from dicomnode.send.scu import echo
from dicomnode.settings import AdminUser, Destination, Peer, Rule, Settings


def save_peer(request: Request, user: AdminUser, peer: Peer) -> None:
    """Add or replace the stored peer ``peer``: it may call in at once."""
    with session_scope(state(request).ctx.sessions) as session:
        config_store.put_peer(session, peer, user=user.name, address=client_address(request))


def remove_peer(request: Request, user: AdminUser, ae_title: str) -> bool:
    """Remove the stored peer ``ae_title``; False when none is stored."""
    with session_scope(state(request).ctx.sessions) as session:
        return config_store.delete_peer(session, ae_title, user=user.name, address=client_address(request))


def save_destination(request: Request, user: AdminUser, destination: Destination) -> None:
    """Add or replace the stored destination ``destination``: it gets the next results."""
    with session_scope(state(request).ctx.sessions) as session:
        config_store.put_destination(session, destination, user=user.name, address=client_address(request))


def remove_destination(request: Request, user: AdminUser, name: str) -> bool:
    """Remove the stored destination ``name``; False when none is stored."""
    with session_scope(state(request).ctx.sessions) as session:
        return config_store.delete_destination(session, name, user=user.name, address=client_address(request))


def save_rule(request: Request, user: AdminUser, rule: Rule) -> None:
    """Add or replace the stored rule ``rule``: the next sweep uses it."""
    with session_scope(state(request).ctx.sessions) as session:
        config_store.put_rule(session, rule, user=user.name, address=client_address(request))


def remove_rule(request: Request, user: AdminUser, name: str) -> bool:
    """Remove the stored rule ``name``; False when none is stored."""
    with session_scope(state(request).ctx.sessions) as session:
        return config_store.delete_rule(session, name, user=user.name, address=client_address(request))


def find_peer(ctx: AdminContext, ae_title: str) -> Peer | None:
    """The peer ``ae_title`` allowed to call in now (configured or stored), if any."""
    return next((p for p in config_store.runtime_peers(ctx.settings, ctx.sessions) if p.ae_title == ae_title), None)


def find_destination(ctx: AdminContext, name: str) -> Destination | None:
    """The destination ``name`` in force now (the PACS, configured or stored), if any."""
    found = config_store.runtime_destinations(ctx.settings, ctx.sessions)
    return next((d for d in found if d.name == name), None)


def echo_peer(settings: Settings, peer: Peer) -> EchoResult:
    """A real C-ECHO (PS3.7 9.3.5) to ``peer``, with its answer and round-trip time."""
    started = time.perf_counter()
    result = echo(settings, peer)
    rtt = (time.perf_counter() - started) * 1000
    return EchoResult(target=str(peer), ok=result.status == 0, rtt_ms=round(rtt, 1), status=str(result))
