"""Issue 22, finding 1: with an admin logged in, a page served from another port of the same host (the
same site, so SameSite=Strict cookies go along) or from another origin auto-submits console forms. Each
is refused with 403, changes nothing and leaves a security-alert audit row; the console itself still
works. Real headless Chromium (Debian's, driven by playwright), a real admin server, a real http.server
as the attacker's page.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import config_store
from dicomnode.admin import console as console_module
from dicomnode.admin.auth import hash_password
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.models import AuditRecord
from dicomnode.settings import AdminUser, Settings
from tests.conftest import make_settings
from tests.support.admin import admin_server, chromium
from tests.support.net import free_port, wait_for

USERS = [AdminUser(name="boss", password_hash=hash_password("admin-pass-1", 1000), role="admin")]

# what the attacker's page posts, and what must not appear afterwards
ATTACKS = {
    "peer": ("/ui/peers", {"ae_title": "EVILSCP", "host": "*", "port": "104"}),
    "destination": ("/ui/destinations", {"name": "evil", "ae_title": "EVILSCP", "host": "127.0.0.1",
                                         "port": "11112", "send": "SEG"}),
    "logout": ("/ui/logout", {}),
    "login": ("/ui/login", {"user": "boss", "password": "admin-pass-1", "csrf_token": "guessed"}),
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def console(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    configured = make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=USERS)
    with admin_server(configured, sessions) as base:
        yield base


@contextmanager
def attacker(host: str, target: str) -> Iterator[str]:
    """A web server on ``host`` (another port, or another address) whose page ``/<attack>`` auto-submits
    that attack's form to the console at ``target``; its base URL."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.strip("/") not in ATTACKS:  # the browser's favicon.ico
                self.send_error(404)
                return
            path, fields = ATTACKS[self.path.strip("/")]
            inputs = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in fields.items())
            body = (f'<html><body onload="document.forms[0].submit()"><form method="post" action="{target}{path}">'
                    f"{inputs}</form></body></html>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, free_port()), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _logged_in(browser: Any, base: str) -> Any:
    page = browser.new_context().new_page()
    page.goto(base + "/ui/login")
    page.get_by_label("User").fill("boss")
    page.get_by_label("Password").fill("admin-pass-1")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/ui/")
    return page


def _refusals(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == AuditEvent.REQUEST_REFUSED.value))
        return [{"actor": r.actor, **json.loads(r.detail)} for r in rows]


def _configured(sessions: sessionmaker[Session]) -> tuple[list[str], list[str]]:
    with sessions() as session:
        return ([p.ae_title for p in config_store.list_peers(session)],
                [d.name for d in config_store.list_destinations(session)])


def _attack(page: Any, evil: str, base: str, attack: str) -> int:
    """Open the attacker's page in the admin's browser; the status of the console's answer to its POST."""
    with page.expect_response(lambda r: r.url.startswith(base) and r.request.method == "POST") as answer:
        page.goto(f"{evil}/{attack}")
    status: int = answer.value.status
    return status


@pytest.mark.parametrize("attack", ["peer", "destination", "logout", "login"])
def test_a_page_on_another_port_of_the_host_is_refused(browser: Any, console: str, attack: str,
                                                       sessions: sessionmaker[Session]) -> None:
    # measured on main: the peer (host *) and the destination EVILSCP were saved, audited as the admin
    page = _logged_in(browser, console)
    with attacker("127.0.0.1", console) as evil:
        assert _attack(page, evil, console, attack) == 403
    # the 403 page the forged POST navigated to (polled: the navigation may still be committing)
    expect(page.locator("body")).to_contain_text("did not come from this console")
    assert _configured(sessions) == ([], [])
    refusals = wait_for(lambda: _refusals(sessions), timeout=10, msg="the refusal audited")
    assert refusals[0]["actor"] == "boss"  # whose browser (and session cookie) was used
    assert refusals[0]["address"] == "127.0.0.1" and refusals[0]["security_alert"] is True
    assert f"Origin '{evil}'" in refusals[0]["reason"]
    page.goto(console + "/ui/")
    assert page.url == console + "/ui/"  # still logged in: the forged logout did not end the session


def test_a_page_from_another_origin_is_refused(browser: Any, console: str, sessions: sessionmaker[Session]) -> None:
    page = _logged_in(browser, console)
    with attacker("127.0.0.2", console) as evil:
        assert _attack(page, evil, console, "peer") == 403
    assert _configured(sessions) == ([], [])
    assert wait_for(lambda: _refusals(sessions), timeout=10, msg="the refusal audited")[0]["address"] == "127.0.0.1"


def test_the_console_itself_still_changes_things_and_logs_out(browser: Any, console: str,
                                                              sessions: sessionmaker[Session]) -> None:
    page = _logged_in(browser, console)
    page.goto(console + "/ui/peers")
    page.locator("#peer-ae").fill("MODALITY1")
    page.locator("#peer-host").fill("10.1.2.3")
    page.get_by_role("button", name="Save peer").click()
    assert "peer MODALITY1 saved" in page.get_by_role("status").first.inner_text()
    page.locator("#dest-name").fill("research")
    page.locator("#dest-ae").fill("RESEARCH")
    page.get_by_role("button", name="Save destination").click()
    assert "destination research saved" in page.get_by_role("status").first.inner_text()
    page.get_by_role("button", name="remove MODALITY1").click()
    assert "peer MODALITY1 removed" in page.get_by_role("status").first.inner_text()
    assert _configured(sessions) == ([], ["research"])
    page.get_by_role("button", name="log out").click()
    page.wait_for_url("**/ui/login")
    page.goto(console + "/ui/")
    assert page.url.endswith("/ui/login")  # the session ended
    assert _refusals(sessions) == []


def test_every_post_form_of_the_console_carries_its_token() -> None:
    templates = Path(console_module.__file__).parent / "templates"
    forms = [(t.name, f) for t in sorted(templates.glob("*.html"))
             for f in re.findall(r"<form\b[^>]*>[^\n]*", t.read_text()) if 'method="post"' in f]
    assert len(forms) >= 13  # login, logout, jobs, peers, destinations, rules, the rule tester
    assert [name for name, form in forms if '<input type="hidden" name="csrf_token" value="{{ csrf_token }}">'
            not in form] == []


def test_docs_load_nothing_from_another_host(browser: Any, settings: Settings,
                                             sessions: sessionmaker[Session]) -> None:
    # measured on main: /docs loaded Swagger UI from a public CDN (fails offline, shows the admin's browsing)
    configured = make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_docs=True)
    with admin_server(configured, sessions) as base:
        page = browser.new_context().new_page()
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(base) else outside.append(r.url))
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base) else route.abort())
        page.goto(base + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert "dicomnode admin API" in page.locator(".swagger-ui .info .title").inner_text()
        page.locator(".opblock-summary-path", has_text="/api/studies").first.wait_for()  # the document rendered
        assert outside == []
