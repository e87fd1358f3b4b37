"""ATNA transport against a syslog receiver on loopback: RFC 5424 over TCP (RFC 6587), TLS and UDP."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.anchor import CHECKPOINT_DETAIL, Checkpoint
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.models import AuditCursor, AuditRecord
from dicomnode.audit.syslog import Forwarder
from dicomnode.audit.trail import record
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.migrate import upgrade
from dicomnode.node import start_node
from dicomnode.settings import Settings
from tests.conftest import make_settings
from tests.support.audit_schema import check, codes
from tests.support.certs import make_ca, make_cert
from tests.support.cli import run_cli
from tests.support.net import free_port, wait_for
from tests.support.syslog import SyslogReceiver
from tests.support.tamper import tamper


def write_events(sessions: sessionmaker[Session], n: int = 1) -> None:
    for _ in range(n):
        with session_scope(sessions) as session:
            record(session, AuditEvent.APPLICATION_START, actor="DICOMNODE")
            record(session, AuditEvent.JOB_QUEUED, actor="router")  # internal: no message
            record(session, AuditEvent.STUDY_RECEIVED, actor="ORTHANC", study_uid="1.2.3", patient_id="PID-7",
                   patient_name="DOE^JANE", address="127.0.0.1", sop_classes={"1.2.840.10008.5.1.4.1.1.4": 2})
            record(session, AuditEvent.ASSOCIATION_REJECTED, Outcome.MINOR_FAILURE, actor="INTRUDER",
                   address="127.0.0.1", reason="calling AE title 'INTRUDER' is not a known peer")


def forwarder(settings: Settings, sessions: sessionmaker[Session], url: str, **extra: object) -> Forwarder:
    configured = make_settings(settings.data_dir, audit_repository=url, audit_poll_seconds=0.1,
                               audit_retry_seconds=0.2, **extra)
    return Forwarder(configured, sessions)


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_messages_are_rfc5424_with_valid_audit_xml(settings: Settings, sessions: sessionmaker[Session],
                                                   protocol: str) -> None:
    receiver = SyslogReceiver(free_port(), protocol).start()
    sender = forwarder(settings, sessions, f"{protocol}://127.0.0.1:{receiver.port}")
    try:
        write_events(sessions)
        sender.start()
        wait_for(lambda: len(receiver.messages) >= 3, timeout=20, msg="three audit messages")
    finally:
        sender.stop()
        receiver.stop()
    assert len(receiver.messages) == 3
    for message in receiver.messages:
        assert message.pri == 85 and message.app == "dicomnode" and message.msgid == "IHE+RFC-3881"
        check(message.xml)
    event_ids = [codes(check(m.xml), "EventIdentification/EventID")[0] for m in receiver.messages]
    assert event_ids == ["110100", "110104", "110113"]
    assert b"DOE^JANE" in receiver.messages[1].xml and b"PID-7" in receiver.messages[1].xml


def test_repository_down_then_back_loses_nothing_and_repeats_nothing(settings: Settings,
                                                                     sessions: sessionmaker[Session],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nobody listens yet
    sender = forwarder(settings, sessions, f"tcp://127.0.0.1:{port}")
    caplog.set_level(logging.WARNING, logger="dicomnode.audit.syslog")
    sender.start()
    write_events(sessions, n=5)  # written while the repository is down: never blocked

    def said() -> list[logging.LogRecord]:  # the operator is told, with what failed and when it tries again
        return [r for r in caplog.records if r.getMessage().startswith("audit repository unreachable (")]

    wait_for(lambda: said(), timeout=30, msg="the warning that the repository is unreachable")
    assert said()[0].getMessage() == (f"audit repository unreachable (ConnectionRefusedError); retrying in "
                                      f"{sender.settings.audit_retry_seconds:g} s")
    assert getattr(said()[0], "ctx", None) == {"stage": "audit"}
    assert sender.sent == 0
    sender.stop()
    receiver = SyslogReceiver(port).start()
    restarted = forwarder(settings, sessions, f"tcp://127.0.0.1:{port}")  # a node restart: the cursor is in the DB
    try:
        restarted.start()
        wait_for(lambda: len(receiver.messages) >= 15, timeout=30, msg="the queued messages")
        write_events(sessions, n=1)
        wait_for(lambda: len(receiver.messages) >= 18, timeout=30, msg="the new messages")
    finally:
        restarted.stop()
        receiver.stop()
    assert len(receiver.messages) == 18  # 6 x 3 mapped rows, each once


def test_tls_transport(settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    server = make_cert(ca, tmp_path, "arr")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert, server.key)
    receiver = SyslogReceiver(free_port(), "tcp", tls_context=context).start()
    sender = forwarder(settings, sessions, f"tls://127.0.0.1:{receiver.port}", tls_ca_file=ca.cert)
    try:
        write_events(sessions)
        sender.checkpoint(Checkpoint(at="2026-11-23T19:30:01.123456Z", rows=1, head_id=1, head_hash="ab" * 32))
        sender.start()
        wait_for(lambda: len(receiver.messages) >= 4, timeout=20, msg="audit messages over TLS")
    finally:
        sender.stop()
        receiver.stop()
    for message in receiver.messages:
        check(message.xml)
    assert sender.sent == len(receiver.messages) == 4  # three rows' messages and the checkpoint, each counted once


def test_checkpoints_in_the_stream_find_a_truncated_trail(settings: Settings, tmp_path: Path) -> None:
    receiver = SyslogReceiver(free_port()).start()
    node_settings = make_settings(settings.data_dir, host="127.0.0.1", port=free_port(), start_worker=False,
                                  audit_anchor_seconds=0.3, min_free_disk_mb=1, audit_poll_seconds=0.1,
                                  audit_repository=f"tcp://127.0.0.1:{receiver.port}")
    sessions = make_sessionmaker(make_engine(node_settings.db_url))
    try:
        node = start_node(node_settings)
        try:
            write_events(sessions, n=3)
            wait_for(lambda: len(checkpoints(receiver)) >= 3, timeout=30, msg="checkpoints: at start and periodically")
        finally:
            node.stop()
        with sessions() as session:
            newest = session.scalars(select(AuditRecord).order_by(AuditRecord.id.desc()).limit(1)).one()
        # sent before stop() returned; the receiver's thread may still be reading it
        wait_for(lambda: any(c.head_id == newest.id for c in checkpoints(receiver)), timeout=10,
                 msg="the checkpoint taken at stop")
    finally:
        receiver.stop()
    for message in receiver.messages:
        check(message.xml)
    anchors = checkpoints(receiver)
    assert (anchors[-1].rows, anchors[-1].head_id, anchors[-1].head_hash) == (newest.id, newest.id, newest.hash)
    assert newest.event == "application_stop"  # the checkpoint at stop anchors the stop row
    collected = tmp_path / "audit.log"  # what a site's collector keeps: the raw messages, one after another
    collected.write_bytes(b"\n".join(b"<85>1 - node dicomnode 1 IHE+RFC-3881 - \xef\xbb\xbf" + m.xml
                                     for m in receiver.messages) + b"\n")
    tamper(sessions, f"DELETE FROM audit WHERE id > {newest.id - 3}")  # the newest three rows
    env = {**os.environ, "DICOMNODE_DATA_DIR": str(node_settings.data_dir)}
    result = run_cli(["audit", "verify", "--anchor", str(collected)], env)
    assert result.returncode == 1
    first = newest.id - 2
    assert (f"rows {first} to {newest.id} (ids {first} to {newest.id}) are missing") in result.stderr


def checkpoints(receiver: SyslogReceiver) -> list[Checkpoint]:
    """The checkpoints among the messages received so far (Audit Log Used with the checkpoint detail)."""
    found = []
    for message in list(receiver.messages):
        detail = ET.fromstring(message.xml).find("ParticipantObjectIdentification/ParticipantObjectDetail")
        if detail is not None and detail.get("type") == CHECKPOINT_DETAIL:
            found.append(Checkpoint(**json.loads(base64.b64decode(detail.get("value", "")))))
    return found


def test_an_empty_trail_has_nothing_to_forward(settings: Settings, sessions: sessionmaker[Session]) -> None:
    sender = forwarder(settings, sessions, f"tcp://127.0.0.1:{free_port()}")  # nobody listens: nothing to send
    assert sender.forward_pending() is False  # so the thread waits audit_poll_seconds, not spins
    write_events(sessions)
    with pytest.raises(OSError):
        sender.forward_pending()


def test_forwarder_outlives_a_database_error(settings: Settings, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A database that fails (here: not migrated yet) is logged without PHI and tried again; the thread
    goes on and forwards the trail once the database answers."""
    url = f"sqlite:///{tmp_path / 'late.sqlite'}"
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    receiver = SyslogReceiver(free_port()).start()
    sender = forwarder(settings, sessions, f"tcp://127.0.0.1:{receiver.port}")
    caplog.set_level(logging.ERROR, logger="dicomnode")
    try:
        sender.start()
        wait_for(lambda: any(getattr(r, "ctx", {}).get("stage") == "audit" for r in caplog.records), timeout=20,
                 msg="the forwarder's error logged")
        upgrade(url)
        write_events(sessions)
        wait_for(lambda: len(receiver.messages) >= 3, timeout=20, msg="the trail forwarded after the error")
    finally:
        sender.stop()
        receiver.stop()
        engine.dispose()
    (error, *_) = [r for r in caplog.records if getattr(r, "ctx", {}).get("stage") == "audit"]
    assert error.getMessage() == "audit forwarder error" and error.exc_info is not None
    assert len(receiver.messages) == 3


def test_a_repository_that_never_answers_the_tls_handshake_is_given_up_and_retried(
        settings: Settings, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture) -> None:
    """A TLS repository that takes the connection and then says nothing holds the forwarder for its timeout,
    not for ever: it is reported unreachable and tried again, the rows kept for the next try."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # the kernel completes the TCP handshake; nobody answers the ClientHello
    sender = forwarder(settings, sessions, f"tls://127.0.0.1:{silent.getsockname()[1]}")
    sender.timeout_seconds = 0.5
    caplog.set_level(logging.WARNING, logger="dicomnode.audit.syslog")

    def timed_out() -> int:
        return sum(r.getMessage().startswith("audit repository unreachable (TimeoutError)") for r in caplog.records)

    try:
        write_events(sessions)
        sender.start()
        wait_for(lambda: timed_out() >= 2, timeout=30, msg="the stalled handshake given up, twice")
    finally:
        sender.stop()
        silent.close()
    assert sender.sent == 0


def test_a_repository_unreachable_at_stop_is_said_and_the_rows_kept(
        settings: Settings, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture) -> None:
    """The node's stop sends what is pending once more; a repository that is not there then is a warning,
    and the rows stay in the trail for the next start (the cursor does not move)."""
    caplog.set_level(logging.WARNING, logger="dicomnode.audit.syslog")
    sender = forwarder(settings, sessions, f"tcp://127.0.0.1:{free_port()}")  # nothing listens there
    write_events(sessions)
    sender.stop(flush=True)
    (said,) = [r for r in caplog.records if r.getMessage() == "audit repository unreachable at stop"]
    assert getattr(said, "ctx", None) == {"stage": "audit"} and sender.sent == 0
    with sessions() as session:
        assert session.scalars(select(AuditCursor)).first() is None  # nothing was sent: nothing marked sent
