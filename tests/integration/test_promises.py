"""README promises that no other test held to their stated value, against the node's real doors on loopback
(docs/testing.md, "Promises and the tests that keep them")."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin import app
from dicomnode.admin.auth import hash_password
from dicomnode.admin.throttle import LoginThrottle
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record, verify
from dicomnode.db import session_scope
from dicomnode.node import start_node
from dicomnode.send.scu import send_files
from dicomnode.settings import AdminUser, Peer, Settings
from tests.conftest import make_settings
from tests.integration.conftest import StartScp
from tests.support.admin import Answer, admin_server, call, exchange
from tests.support.net import free_port
from tests.support.synthetic import make_series, write_series
from tests.support.tamper import tamper

USERS = [AdminUser(name="it", password_hash=hash_password("s3cret-pass", 1000))]


@pytest.mark.parametrize("max_pdu", [16384, 65536])
def test_the_scp_announces_max_pdu_bytes(start_scp_with: StartScp, max_pdu: int) -> None:
    """README, Limits: `max_pdu_bytes`: the largest PDU the node takes, announced in its A-ASSOCIATE-AC."""
    scp = start_scp_with(max_pdu_bytes=max_pdu)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOMNODE", max_pdu=0)
    assert assoc.is_established
    try:
        assert assoc.acceptor.maximum_length == max_pdu
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


@pytest.mark.parametrize("max_pdu", [16384, 65536])
def test_the_node_announces_max_pdu_bytes_when_it_sends(settings: Settings, tmp_path: Path, max_pdu: int) -> None:
    """config/dicomnode.example.toml: `max_pdu_bytes` is the largest PDU the node receives "and sends": its
    own A-ASSOCIATE-RQ, when it sends results, carries it (a pynetdicom SCP as the PACS reads it)."""
    asked: list[int] = []
    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(MRImageStorage)
    port = free_port()
    server = pacs.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_REQUESTED, lambda event: asked.append(event.assoc.requestor.maximum_length)),
        (evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        (path,) = write_series(make_series(n_slices=1, rows=8, columns=8), tmp_path / "results")
        configured = make_settings(settings.data_dir, max_pdu_bytes=max_pdu)
        outcomes = send_files(configured, Peer(ae_title="PACS", host="127.0.0.1", port=port), [path])
    finally:
        server.shutdown()
    assert [o.status for o in outcomes] == [0x0000] and asked == [max_pdu]


@pytest.fixture
def admin(settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The admin API, its login throttle's clock stopped: no delay runs out however slowly a loaded machine
    answers (as in test_admin_limits)."""
    monkeypatch.setattr(app, "LoginThrottle", partial(LoginThrottle, clock=lambda: 1000.0))
    configured = make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=USERS,
                               admin_login_free_failures=2, admin_login_max_delay_seconds=30.0)
    with admin_server(configured, sessions) as url:
        yield url


def test_logins_that_arrive_together_run_one_password_check_at_a_time_and_the_throttle_stops_the_rest(
        settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """README: a login costs one PBKDF2 run "and one runs at a time"; after `admin_login_free_failures`
    failures the rest "get 429 with Retry-After ... without any password check" -- those already waiting for
    their turn too. Six wrong passwords at once, one free failure, a real-cost hash (310,000 iterations):
    one 401, five 429."""
    monkeypatch.setattr(app, "LoginThrottle", partial(LoginThrottle, clock=lambda: 1000.0))
    users = [AdminUser(name="it", password_hash=hash_password("s3cret-pass"))]
    configured = make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=users,
                               admin_login_free_failures=1, admin_login_max_delay_seconds=30.0)
    with admin_server(configured, sessions) as url:
        together = threading.Barrier(6)

        def wrong(i: int) -> Answer:
            together.wait(30)
            return exchange(url, "POST", "/api/login", {"Content-Type": "application/json"},
                            b'{"user": "it", "password": "guess%d"}' % i)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(wrong, range(6)))
    assert sorted(a.status for a in answers) == [401, 429, 429, 429, 429, 429]
    throttled = [a for a in answers if a.status == 429]
    assert all(json.loads(a.text) == {"detail": "too many failed logins: try again later"} for a in throttled)
    assert all(a.header("Retry-After") in ("1", "2") for a in throttled)  # the first delay, 1 s, rounded up


def test_a_throttled_login_gets_429_with_retry_after(admin: str) -> None:
    """README, Admin API limits: after `admin_login_free_failures` failures, further tries "get 429 with
    Retry-After before then, without any password check"."""
    answers = [call(admin, "POST", "/api/login", {"user": "it", "password": "wrong"})[0] for _ in range(2)]
    assert answers == [401, 401]  # the free failures: checked, and wrong
    body = b'{"user": "it", "password": "s3cret-pass"}'  # the right password, unchecked while throttled
    answer = exchange(admin, "POST", "/api/login", {"Content-Type": "application/json"}, body)
    assert answer.status == 429, answer.text
    retry_after = answer.header("Retry-After")
    assert retry_after is not None and retry_after.isdigit()
    assert int(retry_after) in (1, 2)  # the first delay, 1 s, in whole seconds rounded up


# every column a row's content is made of, and an edit of it (the hash and prev_hash are the chain itself)
EDITS = {
    "at": "at = '2001-02-03 04:05:06.000000'",
    "event": "event = 'job_succeeded'",
    "outcome": "outcome = '12'",
    "actor": "actor = 'SOMEONE'",
    "study_uid": "study_uid = '1.2.999'",
    "patient_id": "patient_id = 'OTHER-ID'",
    "patient_name": "patient_name = 'SOMEONE^ELSE'",
    "detail": "detail = '{\"index\": 99}'",
}


@pytest.mark.parametrize("column", sorted(EDITS))
def test_an_edit_of_any_column_of_a_row_is_found(sessions: sessionmaker[Session], column: str) -> None:
    """README, Audit: "each row carries SHA-256 over its content and the previous row's hash ... `dicomnode
    audit verify` ... names the first bad row when a row was edited": every column is content."""
    for i in range(4):
        with session_scope(sessions) as session:
            record(session, AuditEvent.INSTANCE_RECEIVED, actor="PACS", study_uid="1.2.3", patient_id="P1",
                   patient_name="DOE^JANE", index=i)
    assert verify(sessions).ok
    tamper(sessions, f"UPDATE audit SET {EDITS[column]} WHERE id = 3")
    result = verify(sessions)
    assert (result.ok, result.first_bad_id) == (False, 3), column


def test_a_started_node_keeps_its_start_up_heap_out_of_full_collections(settings: Settings) -> None:
    # a full collection holds the GIL: over the start-up heap it stalled every association (dicomnode.worker)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    node = start_node(make_settings(settings.data_dir, host="127.0.0.1", port=free_port(), start_worker=False,
                                    min_free_disk_mb=1))
    try:
        assert gc.get_freeze_count() > 100_000  # the imports alone are about 440,000 objects
    finally:
        node.stop()
        gc.unfreeze()
