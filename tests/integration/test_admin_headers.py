"""Issue 22, findings 5 and 10: what a client says in its headers (X-Forwarded-For, Host) steers nothing
unless it is a trusted proxy; the console's cookies are Secure behind https; /docs loads nothing from
outside; the console's audit page notices removed newest rows. Real admin server, raw loopback requests."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin import app
from dicomnode.admin.throttle import LoginThrottle
from dicomnode.audit.anchor import write_checkpoint
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.models import AuditRecord
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.settings import Settings
from tests.integration.conftest import Serve
from tests.support.admin import call, console_login, exchange, login
from tests.support.net import listen_backlog
from tests.support.tamper import tamper

PUBLIC = "https://dicomnode.example.org"


def _addresses(sessions: sessionmaker[Session], event: AuditEvent) -> list[str]:
    with sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == event.value))
        return [json.loads(r.detail).get("address", "") for r in rows]


def test_forwarded_for_from_loopback_is_not_believed_by_default(serve: Serve, sessions: sessionmaker[Session],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # measured on main: uvicorn trusted X-Forwarded-For from 127.0.0.1, so rotating it gave 6 failed logins
    # on one socket with no 429, and the audit rows recorded the invented 203.0.113.x addresses
    monkeypatch.setattr(app, "LoginThrottle", partial(LoginThrottle, clock=lambda: 1000.0))  # no delay runs out
    base = serve()
    login(base, "it", "s3cret-pass")
    status, _ = call(base, "POST", "/api/login", {"user": "it", "password": "s3cret-pass"},
                     headers={"X-Forwarded-For": "203.0.113.1"})
    assert status == 200
    statuses = [call(base, "POST", "/api/login", {"user": f"guess{i}", "password": "wrong"},
                     headers={"X-Forwarded-For": f"203.0.113.{10 + i}"})[0] for i in range(6)]
    assert 429 in statuses, statuses  # the per-address throttle sees one address, whatever the header says
    assert set(_addresses(sessions, AuditEvent.USER_LOGIN)) == {"127.0.0.1"}
    assert set(_addresses(sessions, AuditEvent.USER_LOGIN_FAILED)) == {"127.0.0.1"}


def test_forwarded_for_from_a_trusted_proxy_is_the_client(serve: Serve, sessions: sessionmaker[Session]) -> None:
    base = serve(admin_trusted_proxies=["127.0.0.1"])
    status, _ = call(base, "POST", "/api/login", {"user": "it", "password": "s3cret-pass"},
                     headers={"X-Forwarded-For": "203.0.113.7"})
    assert status == 200
    status, _ = call(base, "POST", "/api/login", {"user": "it", "password": "s3cret-pass"}, source="127.0.0.2",
                     headers={"X-Forwarded-For": "203.0.113.8"})  # 127.0.0.2 is no trusted proxy
    assert status == 200
    assert _addresses(sessions, AuditEvent.USER_LOGIN) == ["203.0.113.7", "127.0.0.2"]


@pytest.mark.parametrize("path", ["/ui", "/", "/ui/", "/ui/studies/", "/api/studies/", "/ui/audit"])
def test_no_redirect_is_built_from_the_host_header(serve: Serve, path: str) -> None:
    # measured on main: "Host: evil.example" on /ui answered 307 to http://evil.example/ui/
    answer = exchange(serve(), "GET", path, {"Host": "evil.example"})
    location = answer.header("Location")
    assert location is None or (location.startswith("/") and not location.startswith("//")), location
    assert "evil.example" not in (location or "") + answer.text


def test_console_cookies_are_secure_behind_an_https_origin(serve: Serve) -> None:
    # measured on main: behind the TLS proxy the session cookie had no Secure flag
    base = serve(admin_public_origin=PUBLIC)
    page = exchange(base, "GET", "/ui/login")
    assert "; secure" in page.cookies()["dicomnode_login_csrf"].lower()
    nonce = page.cookies()["dicomnode_login_csrf"].split(";")[0].split("=", 1)[1]
    form = f"user=it&password=s3cret-pass&csrf_token={nonce}".encode()
    answer = exchange(base, "POST", "/ui/login", {
        "Origin": PUBLIC, "Cookie": f"dicomnode_login_csrf={nonce}",
        "Content-Type": "application/x-www-form-urlencoded"}, form)
    assert answer.status == 303 and answer.header("Location") == "/ui/"
    session = answer.cookies()["dicomnode_session"].lower()
    assert "; secure" in session and "; httponly" in session and "samesite=strict" in session


def test_console_cookies_over_plain_http_on_loopback_are_not_secure(serve: Serve) -> None:
    base = serve()
    assert "; secure" not in exchange(base, "GET", "/ui/login").cookies()["dicomnode_login_csrf"].lower()
    assert console_login(base, "it", "s3cret-pass")  # logged in over http: the cookie came back


def test_docs_are_off_by_default(serve: Serve) -> None:
    base = serve()
    assert [exchange(base, "GET", p).status for p in ("/docs", "/redoc")] == [404, 404]
    assert exchange(base, "GET", "/openapi.json").status == 200


def test_docs_when_on_reference_no_other_host(serve: Serve) -> None:
    # measured on main: /docs loaded Swagger UI's script and stylesheet from a public CDN
    base = serve(admin_docs=True)
    page = exchange(base, "GET", "/docs")
    assert page.status == 200
    assert "http://" not in page.text and "https://" not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) >= 2  # the script and the stylesheet
    for asset in assets:  # on this node: not protocol-relative, and served
        assert asset.startswith("/") and not asset.startswith("//"), asset
        assert exchange(base, "GET", asset).status == 200, asset
    assert exchange(base, "GET", "/redoc").status == 404  # ReDoc fetches its logo from its maker's CDN


def test_console_audit_page_says_truncated_when_newest_rows_were_removed(
        serve: Serve, settings: Settings, sessions: sessionmaker[Session]) -> None:
    # measured on main: the page said "Audit trail intact" after the newest rows were deleted
    base = serve()
    cookie = {"Cookie": f"dicomnode_session={console_login(base, 'it', 's3cret-pass')}"}
    with session_scope(sessions) as session:
        for i in range(4):
            record(session, AuditEvent.CONFIG_CHANGED, actor="it", reason=f"change {i}")
    anchor = write_checkpoint(sessions, settings.anchor_path)
    page = exchange(base, "GET", "/ui/audit", cookie)
    assert f"Audit trail intact: {anchor.rows} rows verified, matching 1 anchor checkpoint(s)" in page.text
    tamper(sessions, "DELETE FROM audit WHERE id IN (SELECT id FROM audit ORDER BY id DESC LIMIT 3)")
    page = exchange(base, "GET", "/ui/audit", cookie)
    assert page.status == 200
    verdict = re.search(r'<p id="verify" class="bad">(.*?)</p>', page.text, re.DOTALL)
    assert verdict is not None, page.text[:500]
    assert "Audit trail truncated: the newest 3 row(s) are missing" in verdict.group(1)
    assert f"ids {anchor.head_id - 2} to {anchor.head_id}" in verdict.group(1)


def test_console_audit_page_without_an_anchor_says_it_is_unchecked(serve: Serve, settings: Settings) -> None:
    base = serve()
    cookie = {"Cookie": f"dicomnode_session={console_login(base, 'it', 's3cret-pass')}"}
    assert not Path(settings.anchor_path).exists()
    page = exchange(base, "GET", "/ui/audit", cookie)
    assert "no anchor checkpoint yet" in page.text and "removed newest rows would not show" in page.text


def test_a_burst_of_connections_is_queued_not_dropped(serve: Serve) -> None:
    # as the DICOM listener (tests/integration/test_stall.py): the kernel's accept queue is not socketserver's 5
    assert listen_backlog(int(serve().rsplit(":", 1)[1])) >= 128
