"""Peers, routing rules and result destinations as data: changed at run time (admin API, console,
CLI), every change audited, read afresh by the receiver, the sweep and the workers, so that a change
takes effect without a restart.

The configuration file's peers, rules and destinations stay in force; these add to them (a rule stored
here replaces the manifest default of its model, as a configured rule does; a destination stored here
replaces a configured one of the same name).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.jobs.models import DestinationConfig, PeerConfig, RuleConfig
from dicomnode.jobs.routing import effective_rules
from dicomnode.log import extra
from dicomnode.settings import Destination, Peer, Rule, Settings

log = logging.getLogger(__name__)
Row = TypeVar("Row", PeerConfig, RuleConfig, DestinationConfig)
Item = TypeVar("Item", Peer, Rule, Destination)


def _peer(row: PeerConfig) -> Peer:
    return Peer(ae_title=row.ae_title, host=row.host, port=row.port, tls=row.tls, tls_subject_cn=row.tls_subject_cn,
                tls_sha256=row.tls_sha256, query=row.query, retrieve=row.retrieve)  # type: ignore[arg-type]


def _rule(row: RuleConfig) -> Rule:
    return Rule(name=row.name, model=row.model, match=json.loads(row.match),
                destinations=json.loads(row.destinations or "[]"))


def _destination(row: DestinationConfig) -> Destination:
    return Destination.model_validate({"name": row.name, "ae_title": row.ae_title, "host": row.host, "port": row.port,
                                       "tls": row.tls, "send": [k for k in row.send.split(",") if k]})


def _valid(rows: Iterable[Row], build: Callable[[Row], Item]) -> list[Item]:
    """The stored rows that still validate. A row stored before a check existed (a peer host ``a\\nb``, a
    rule named ``x/../y``) is left out, with a warning, so that it is not in force and stops nothing."""
    found: list[Item] = []
    for row in rows:
        try:
            found.append(build(row))
        except ValueError as exc:  # pydantic's ValidationError is one
            why = exc.errors(include_url=False, include_input=False)[0]["msg"] if isinstance(
                exc, ValidationError) else str(exc)
            log.warning("a stored %s is not valid and is ignored: %s", type(row).__name__, why,
                        extra=extra(stage="config", key=_key(row)[:80]))
    return found


def _key(row: PeerConfig | RuleConfig | DestinationConfig) -> str:
    return row.ae_title if isinstance(row, PeerConfig) else row.name


def _snapshot(row: Row | None, build: Callable[[Row], Item]) -> dict[str, Any] | None:
    """What the audit trail records of ``row`` before a change: the item, or its key if it is not valid."""
    if row is None:
        return None
    try:
        return build(row).model_dump()
    except ValueError:
        return {"invalid": True, "key": _key(row)}


def check_rule_model(rule: Rule, installed: Collection[str]) -> None:
    """Refuse ``rule`` when the model it names is not among ``installed`` (the installed models' ids).

    Raises
    ------
    ValueError
        One sentence naming the model and the installed ones.
    """
    if rule.model not in installed:
        raise ValueError(f"rule {rule.name} names model {rule.model}, which is not installed (installed: "
                         f"{', '.join(sorted(installed)) or 'none'})")


def list_destinations(session: Session) -> list[Destination]:
    return _valid(session.scalars(select(DestinationConfig).order_by(DestinationConfig.name)), _destination)


def put_destination(session: Session, destination: Destination, *, user: str, address: str) -> None:
    row = session.get(DestinationConfig, destination.name)
    before = _snapshot(row, _destination)
    if row is None:
        row = DestinationConfig(name=destination.name)
        session.add(row)
    row.ae_title, row.host, row.port = destination.ae_title, destination.host, destination.port
    row.tls, row.send = destination.tls, ",".join(destination.send)
    _audit(session, "destination", destination.name, before, destination.model_dump(), user, address)


def delete_destination(session: Session, name: str, *, user: str, address: str) -> bool:
    row = session.get(DestinationConfig, name)
    if row is None:
        return False
    _audit(session, "destination", name, _snapshot(row, _destination), None, user, address)
    session.delete(row)
    return True


def list_peers(session: Session) -> list[Peer]:
    return _valid(session.scalars(select(PeerConfig).order_by(PeerConfig.ae_title)), _peer)


def list_rules(session: Session) -> list[Rule]:
    return _valid(session.scalars(select(RuleConfig).order_by(RuleConfig.name)), _rule)


def put_peer(session: Session, peer: Peer, *, user: str, address: str) -> None:
    row = session.get(PeerConfig, peer.ae_title)
    before = _snapshot(row, _peer)
    if row is None:
        row = PeerConfig(ae_title=peer.ae_title)
        session.add(row)
    row.host, row.port, row.tls = peer.host, peer.port, peer.tls
    row.tls_subject_cn, row.tls_sha256 = peer.tls_subject_cn, peer.tls_sha256
    row.query, row.retrieve = peer.query, peer.retrieve
    _audit(session, "peer", peer.ae_title, before, peer.model_dump(), user, address)


def delete_peer(session: Session, ae_title: str, *, user: str, address: str) -> bool:
    row = session.get(PeerConfig, ae_title)
    if row is None:
        return False
    _audit(session, "peer", ae_title, _snapshot(row, _peer), None, user, address)
    session.delete(row)
    return True


def put_rule(session: Session, rule: Rule, *, user: str, address: str) -> None:
    row = session.get(RuleConfig, rule.name)
    before = _snapshot(row, _rule)
    if row is None:
        row = RuleConfig(name=rule.name)
        session.add(row)
    row.model, row.match = rule.model, json.dumps(rule.match, sort_keys=True)
    row.destinations = json.dumps(rule.destinations)
    _audit(session, "rule", rule.name, before, rule.model_dump(), user, address)


def delete_rule(session: Session, name: str, *, user: str, address: str) -> bool:
    row = session.get(RuleConfig, name)
    if row is None:
        return False
    _audit(session, "rule", name, _snapshot(row, _rule), None, user, address)
    session.delete(row)
    return True


def _audit(session: Session, kind: str, name: str, before: Any, after: Any, user: str, address: str) -> None:
    change = "added" if before is None else "removed" if after is None else "changed"
    record(session, AuditEvent.CONFIG_CHANGED, actor=user, kind=kind, name=name, before=before, after=after,
           address=address, reason=f"{kind} {name} {change}")


def runtime_peers(settings: Settings, sessions: sessionmaker[Session]) -> tuple[Peer, ...]:
    """The peers allowed to call in now: the configuration's, then those added at run time."""
    with sessions() as session:
        return settings.known_peers + tuple(list_peers(session))


def query_peers(settings: Settings, sessions: sessionmaker[Session]) -> tuple[Peer, ...]:
    """The peers the node may ask (``query = true``) and call (a host, not a network), PACS first."""
    return tuple(p for p in runtime_peers(settings, sessions) if p.query and p.dialable)


def runtime_rules(settings: Settings, sessions: sessionmaker[Session], defaults: Iterable[Rule]) -> list[Rule]:
    """The routing rules in force now: configured and stored rules, then the models' defaults."""
    with sessions() as session:
        stored = list_rules(session)
    return effective_rules([*settings.rules, *stored], defaults)


PACS_DESTINATION = "pacs"


def runtime_destinations(settings: Settings, sessions: sessionmaker[Session], rule: str | None = None
                         ) -> list[Destination]:
    """Where results go now: the PACS, then configured and stored destinations; only those that rule
    ``rule`` names, when it names any."""
    found: dict[str, Destination] = {}
    if settings.pacs is not None:
        pacs = settings.pacs
        found[PACS_DESTINATION] = Destination(name=PACS_DESTINATION, ae_title=pacs.ae_title, host=pacs.host,
                                              port=pacs.port, tls=pacs.tls)
    with sessions() as session:
        stored = list_destinations(session)
        rules = [*settings.rules, *list_rules(session)]
    for destination in [*settings.destinations, *stored]:
        found[destination.name] = destination
    named = next((r.destinations for r in reversed(rules) if r.name == rule), [])
    return [d for d in found.values() if not named or d.name in named]
