"""A small HTTP client for the admin API over a real loopback socket, and a running admin server."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.app import start_admin
from dicomnode.admin.deps import AdminContext
from dicomnode.settings import Settings


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


def login(base: str, user: str, password: str, source: str = "127.0.0.1") -> str:
    status, body = call(base, "POST", "/api/login", {"user": user, "password": password}, source=source)
    assert status == 200, body
    return str(body["token"])


@contextmanager
def admin_server(settings: Settings, sessions: sessionmaker[Session],
                 models: tuple[str, ...] | None = None) -> Iterator[str]:
    server = start_admin(AdminContext(settings, sessions, models=models))
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
