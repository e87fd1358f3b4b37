"""A small HTTP client for the admin API over a real loopback socket, and a running admin server."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.app import start_admin
from dicomnode.admin.deps import AdminContext
from dicomnode.audit.bursts import BurstAuditor
from dicomnode.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")


def call(base: str, method: str, path: str, body: Any = None, token: str = "", *, raw: bytes | None = None,
         source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request from ``source`` (any 127.0.0.0/8 address); the status and the decoded body."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=data, headers=sent)
        rsp = conn.getresponse()
        status, text = rsp.status, rsp.read().decode()
    finally:
        conn.close()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


@dataclass
class Answer:
    """One raw HTTP answer: the status, the headers (repeated ones kept) and the body as text."""

    status: int
    headers: list[tuple[str, str]]
    text: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def cookies(self) -> dict[str, str]:
        """The Set-Cookie headers, name -> the whole header (attributes included)."""
        return {v.split("=", 1)[0]: v for k, v in self.headers if k.lower() == "set-cookie"}


def exchange(base: str, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
             source: str = "127.0.0.1") -> Answer:
    """One request exactly as given (the Host header too, when ``headers`` names it), redirects not followed."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    sent = dict(headers or {})
    try:
        conn.putrequest(method, path, skip_host="Host" in sent, skip_accept_encoding=True)
        for name, value in {**sent, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        rsp = conn.getresponse()
        return Answer(rsp.status, rsp.getheaders(), rsp.read().decode(errors="replace"))
    finally:
        conn.close()


def console_login(base: str, user: str, password: str, origin: str | None = None) -> str:
    """Log in through the console's form as a browser would (its token, cookie and Origin); the session
    cookie's value."""
    page = exchange(base, "GET", "/ui/login")
    nonce = page.cookies()["dicomnode_login_csrf"].split(";")[0].split("=", 1)[1]
    form = urllib.parse.urlencode({"user": user, "password": password, "csrf_token": nonce}).encode()
    answer = exchange(base, "POST", "/ui/login", {
        "Origin": origin or base, "Cookie": f"dicomnode_login_csrf={nonce}",
        "Content-Type": "application/x-www-form-urlencoded"}, form)
    assert answer.status == 303, (answer.status, answer.text[:300])
    return answer.cookies()["dicomnode_session"].split(";")[0].split("=", 1)[1]


def login(base: str, user: str, password: str, source: str = "127.0.0.1") -> str:
    status, body = call(base, "POST", "/api/login", {"user": user, "password": password}, source=source)
    assert status == 200, body
    return str(body["token"])


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium (/usr/bin/chromium) driven by playwright, which never downloads one."""
    if not CHROMIUM.exists():
        raise AssertionError("Debian chromium is not installed at /usr/bin/chromium: run scripts/test.sh, which "
                             "installs it with the other real peers")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def admin_server(settings: Settings, sessions: sessionmaker[Session],
                 models: tuple[str, ...] | None = None, bursts: BurstAuditor | None = None) -> Iterator[str]:
    server = start_admin(AdminContext(settings, sessions, models=models, bursts=bursts))
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
