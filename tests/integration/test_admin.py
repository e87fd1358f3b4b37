"""The admin API over a real loopback socket: login/logout, peers and rules as data, health, metrics;
every login, failed login, logout and configuration change audited with its user."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.app import start_admin
from dicomnode.admin.auth import hash_password
from dicomnode.admin.deps import AdminContext
from dicomnode.audit.trail import verify
from dicomnode.settings import AdminUser, Settings
from tests.conftest import make_settings
from tests.integration.conftest import StartScp
from tests.support.net import free_port
from tests.support.peers import echoscu
from tests.support.trail import audit_rows


@pytest.fixture
def admin(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[tuple[str, Settings]]:
    configured = make_settings(settings.data_dir, admin_port=free_port(), admin_host="127.0.0.1", min_free_disk_mb=1,
                               admin_users=[AdminUser(name="it", password_hash=hash_password("s3cret", 1000))])
    server = start_admin(AdminContext(configured, sessions))
    yield f"http://127.0.0.1:{configured.admin_port}", configured
    server.shutdown()
    server.server_close()


def call(base: str, method: str, path: str, body: Any = None, token: str = "") -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as rsp:
            raw, status = rsp.read(), rsp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    text = raw.decode()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def login(base: str) -> str:
    status, body = call(base, "POST", "/api/login", {"user": "it", "password": "s3cret"})
    assert status == 200
    return str(body["token"])


def test_health_and_metrics_need_no_login(admin: tuple[str, Settings]) -> None:
    base, _ = admin
    status, body = call(base, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    status, text = call(base, "GET", "/metrics")
    assert status == 200 and "dicomnode_accepting 1" in text and "dicomnode_disk_free_bytes" in text


def test_failed_login_is_a_security_alert(admin: tuple[str, Settings], sessions: sessionmaker[Session]) -> None:
    base, _ = admin
    status, body = call(base, "POST", "/api/login", {"user": "it", "password": "wrong"})
    assert (status, body) == (401, {"detail": "wrong user name or password"})  # which of the two: not said
    (row,) = audit_rows(sessions, "user_login_failed")
    detail = json.loads(row.detail)
    assert (row.actor, row.outcome, detail["security_alert"], detail["address"]) == (
        "it", "minor_failure", True, "127.0.0.1")  # ATNA: a failed login is a minor failure, with where from
    assert detail["reason"] == "wrong user name or password" and detail["burst"].startswith(
        "further failures from 127.0.0.1 or for this user within ")
    assert call(base, "GET", "/api/studies")[0] == 401


def test_login_logout_and_studies(admin: tuple[str, Settings], sessions: sessionmaker[Session]) -> None:
    base, _ = admin
    token = login(base)
    status, body = call(base, "GET", "/api/studies", token=token)
    assert status == 200 and body["studies"] == [] and body["disk"]["accepting"] is True
    assert call(base, "POST", "/api/logout", token=token)[0] == 204
    assert call(base, "GET", "/api/studies", token=token)[0] == 401  # the token is gone
    assert [r.actor for r in audit_rows(sessions, "user_login")] == ["it"]
    assert [r.actor for r in audit_rows(sessions, "user_logout")] == ["it"]


def test_peer_added_at_run_time_may_call_in(admin: tuple[str, Settings], sessions: sessionmaker[Session],
                                            start_scp_with: StartScp) -> None:
    base, _ = admin
    scp = start_scp_with()
    assert echoscu(scp.port, called="DICOMNODE", calling="MODALITY1").returncode != 0
    token = login(base)
    status, _ = call(base, "PUT", "/api/peers/MODALITY1", {"host": "127.0.0.1", "port": 104}, token=token)
    assert status == 200
    assert echoscu(scp.port, called="DICOMNODE", calling="MODALITY1").returncode == 0
    assert call(base, "DELETE", "/api/peers/MODALITY1", token=token)[0] == 204
    assert echoscu(scp.port, called="DICOMNODE", calling="MODALITY1").returncode != 0
    changes = [json.loads(r.detail) for r in audit_rows(sessions, "config_changed")]
    assert [(c["kind"], c["name"], c["before"] is None, c["after"] is None) for c in changes] == [
        ("peer", "MODALITY1", True, False), ("peer", "MODALITY1", False, True)]
    assert all(r.actor == "it" for r in audit_rows(sessions, "config_changed"))
    assert verify(sessions).ok


def test_rules_as_data_and_validation(admin: tuple[str, Settings], sessions: sessionmaker[Session]) -> None:
    base, _ = admin
    token = login(base)
    status, _ = call(base, "PUT", "/api/rules/ct-head", {"model": "deepbet", "match": {"Modality": "^CT$"}},
                     token=token)
    assert status == 200
    status, body = call(base, "GET", "/api/rules", token=token)
    assert body["stored"] == [{"name": "ct-head", "model": "deepbet", "match": {"Modality": "^CT$"},
                               "state": "in force"}]
    assert call(base, "PUT", "/api/rules/bad", {"model": "deepbet", "match": {"Modality": "("}}, token=token)[0] == 422
    (change,) = [json.loads(r.detail) for r in audit_rows(sessions, "config_changed")]
    assert change["kind"] == "rule" and change["after"]["match"] == {"Modality": "^CT$"}


def test_hash_password_cli_makes_a_usable_hash() -> None:
    import subprocess
    import sys

    from dicomnode.admin.auth import check_password

    command = [sys.executable, "-m", "dicomnode", "admin", "hash-password"]
    done = subprocess.run(command, input="correct horse battery\n", capture_output=True, text=True, timeout=60,
                          check=True)
    encoded = done.stdout.strip()
    assert AdminUser(name="x", password_hash=encoded)  # accepted by the settings' validation
    assert check_password("correct horse battery", encoded)
    assert not check_password("correct horse batterY", encoded)
    short = subprocess.run(command, input="short\n", capture_output=True, text=True, timeout=60, check=False)
    assert short.returncode == 2
