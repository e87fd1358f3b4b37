"""Floods at the DICOM doors are audited per burst: a few rows, each with its count, never one row per try.

An unknown AE calling 100 times and 60 failed TLS handshakes used to write 100 and 60 audit rows. Each
is now one row at once (``burst="first"``) and, once the burst is flushed (as the node's maintenance does
when it has been quiet for ``audit_burst_seconds``), one row with how many followed (``burst="ended"``).
A known peer is served meanwhile.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.models import AuditRecord
from dicomnode.receive.handlers import ReceiveContext
from dicomnode.receive.scp import start_scp
from dicomnode.settings import Peer, Settings
from tests.conftest import make_settings
from tests.support.certs import KeyPair, make_ca, make_cert
from tests.support.net import free_port, wait_for
from tests.support.peers import echoscu

BURST_SECONDS = 60.0  # longer than any gap within a flood: each flood is one burst


@dataclass
class Door:
    settings: Settings
    sessions: sessionmaker[Session]
    bursts: BurstAuditor

    def rejections(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.scalars(select(AuditRecord).where(AuditRecord.event == "association_rejected")
                                   .order_by(AuditRecord.id))
            return [{"actor": r.actor, **json.loads(r.detail)} for r in rows]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = make_ca(folder, "hospital-ca"), make_ca(folder, "rogue-ca")
    return {"ca": ca, "node": make_cert(ca, folder, "node"), "pacs": make_cert(ca, folder, "pacs"),
            "rogue": make_cert(rogue, folder, "rogue")}


@pytest.fixture
def open_door(sessions: sessionmaker[Session], settings: Settings, pki: dict[str, KeyPair]
              ) -> Iterator[Callable[..., Door]]:
    """The node's SCP, plain and TLS, with the burst auditor the node would share and flush."""
    servers: list[Any] = []

    def start(**overrides: Any) -> Door:
        node_settings = make_settings(settings.data_dir, **{
            "host": "127.0.0.1", "port": free_port(), "tls_port": free_port(), "tls_cert_file": pki["node"].cert,
            "tls_key_file": pki["node"].key, "tls_ca_file": pki["ca"].cert, "min_free_disk_mb": 1,
            "audit_burst_seconds": BURST_SECONDS, "peers": [Peer(ae_title="STORESCU", host="127.0.0.1")],
            **overrides})
        bursts = BurstAuditor(sessions, BURST_SECONDS)
        servers.extend(start_scp(ReceiveContext(settings=node_settings, sessions=sessions, bursts=bursts)))
        return Door(node_settings, sessions, bursts)

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def door(open_door: Callable[..., Door]) -> Door:
    return open_door()


def during(flood: Callable[[], int], door: Door, known_echo: Callable[[], Any]) -> int:
    """Run ``flood`` in a thread; once its first refusal is audited, a known peer echoes: it must be served."""
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(flood)
        wait_for(lambda: door.rejections() or running.done(), timeout=60, msg="the flood under way")
        echoed = known_echo()
        assert echoed.returncode == 0, echoed.stdout + echoed.stderr
        return running.result(timeout=600)


def counted(door: Door, total: int) -> list[dict[str, Any]]:
    """The rows once the bursts are flushed and all ``total`` refusals are counted (the TLS ones are
    audited by the connection's thread just after the client sees its handshake fail)."""
    def flushed() -> list[dict[str, Any]] | None:
        door.bursts.flush(everything=True)
        rows = door.rejections()
        return rows if sum(int(r["count"]) for r in rows) >= total else None
    return wait_for(flushed, timeout=30, msg=f"{total} refusals counted")


def test_an_unknown_ae_calling_100_times_is_a_burst_with_its_count(door: Door) -> None:
    def flood() -> int:
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(Verification)
        rejected = 0
        for _ in range(100):
            assoc = ae.associate("127.0.0.1", door.settings.port, ae_title="DICOMNODE")
            rejected += assoc.is_rejected
        return rejected

    known = lambda: echoscu(door.settings.port, called="DICOMNODE", calling="STORESCU")  # noqa: E731
    assert during(flood, door, known) == 100
    rows = counted(door, 100)
    assert [(r["actor"], r["burst"], r["count"]) for r in rows] == [("INTRUDER", "first", 1), ("INTRUDER", "ended", 99)]
    assert all(r["reason"] == "calling AE title 'INTRUDER' is not a known peer" and r["security_alert"]
               and r["address"] == "127.0.0.1" for r in rows)


def _failed_handshake(port: int, client: ssl.SSLContext) -> bool:
    """One TLS connection the node must refuse; True once it did (the client's handshake or first read fails)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        try:
            with client.wrap_socket(raw) as tls:  # TLS 1.3: the node refuses after the client's Finished
                tls.recv(1)  # its alert, which raises
        except (ssl.SSLError, ConnectionResetError):
            return True
    return False


def test_60_failed_tls_handshakes_are_a_burst_with_its_count(door: Door, pki: dict[str, KeyPair]) -> None:
    port = door.settings.tls_port
    assert port is not None
    anonymous = ssl.create_default_context(cafile=str(pki["ca"].cert))
    anonymous.check_hostname = False
    untrusted = ssl.create_default_context(cafile=str(pki["ca"].cert))
    untrusted.check_hostname = False
    untrusted.load_cert_chain(pki["rogue"].cert, pki["rogue"].key)

    def flood() -> int:
        return sum(_failed_handshake(port, anonymous if i % 2 else untrusted) for i in range(60))

    def known() -> Any:
        return echoscu(port, called="DICOMNODE", calling="STORESCU",
                       extra_args=("+tls", str(pki["pacs"].key), str(pki["pacs"].cert), "+cf", str(pki["ca"].cert)))

    assert during(flood, door, known) == 60
    rows = counted(door, 60)
    assert 2 <= len(rows) <= 4, rows  # a burst; a refusal audited after a flush (see counted) starts another
    assert sum(int(r["count"]) for r in rows) == 60
    assert all(r["reason"].startswith("TLS handshake failed: ") and r["address"] == "127.0.0.1" for r in rows)


def test_silent_connections_are_a_burst_with_their_count(open_door: Callable[..., Door]) -> None:
    """Connections closed for sending no A-ASSOCIATE-RQ within first_pdu_timeout_seconds: audited, per burst."""
    door = open_door(first_pdu_timeout_seconds=0.5)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", door.settings.port)) as silent:
            silent.settimeout(30)
            assert silent.recv(1) == b""  # the node closed it
    rows = counted(door, 5)
    assert [(r["burst"], r["count"]) for r in rows] == [("first", 1), ("ended", 4)]
    assert rows[0]["reason"] == "no A-ASSOCIATE-RQ within first_pdu_timeout_seconds=0.5"
