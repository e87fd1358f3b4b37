"""The admin REST API (standard library HTTP server): login/logout, peers, rules, studies, health, metrics.

Every /api/ call but login needs ``Authorization: Bearer <token>``. Logins, failed logins, logouts and
configuration changes are audited with the user and address. Bind it to loopback or a management
network; put TLS in front (a reverse proxy) when it leaves the host.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin import auth, config_store
from dicomnode.admin.status import disk_status, metrics, study_rows
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.log import extra
from dicomnode.settings import Peer, Rule, Settings

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class AdminContext:
    settings: Settings
    sessions: sessionmaker[Session]
    extra_metrics: Callable[[], str] | None = None  # more Prometheus text (the per-model metrics)


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    ctx: AdminContext  # set on the subclass made by start_admin
    server_version = "dicomnode-admin"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin %s", format % args)  # paths carry study UIDs: debug only

    # -- plumbing -------------------------------------------------------------------------------------
    def _send(self, status: HTTPStatus, body: Any = None, content_type: str = "application/json") -> None:
        payload = b"" if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def _json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "request body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
        return body

    def _token(self) -> str:
        header = self.headers.get("Authorization", "")
        return header[7:].strip() if header.startswith("Bearer ") else ""

    def _user(self) -> str:
        token = self._token()
        with self.ctx.sessions() as session:
            user = auth.session_user(session, token) if token else None
        if user is None:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "log in first (POST /api/login)")
        return user

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            for route_method, pattern, action in ROUTES:
                match = re.fullmatch(pattern, path)
                if match and route_method == method:
                    action(self, *match.groups())
                    return
            raise ApiError(HTTPStatus.NOT_FOUND, f"no {method} {path}")
        except ApiError as exc:
            self._send(exc.status, {"error": str(exc)})
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            self._send(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": errors})
        except Exception:
            log.exception("admin API error", extra=extra(stage="admin"))
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- routes ---------------------------------------------------------------------------------------
    def health(self) -> None:
        disk = disk_status(self.ctx.settings)
        self._send(HTTPStatus.OK if disk["accepting"] else HTTPStatus.SERVICE_UNAVAILABLE,
                   {"status": "ok" if disk["accepting"] else "refusing instances", "disk": disk})

    def prometheus(self) -> None:
        text = metrics(self.ctx.settings, self.ctx.sessions)
        if self.ctx.extra_metrics is not None:
            text = text.rstrip("\n") + "\n" + self.ctx.extra_metrics()
        self._send(HTTPStatus.OK, text, "text/plain; version=0.0.4")

    def login(self) -> None:
        body = self._json()
        name, password = str(body.get("user", "")), str(body.get("password", ""))
        address = self.client_address[0]
        ok = auth.authenticate(self.ctx.settings.admin_users, name, password)
        with session_scope(self.ctx.sessions) as session:
            if not ok:
                record(session, AuditEvent.USER_LOGIN_FAILED, Outcome.MINOR_FAILURE, actor=name[:128],
                       address=address, reason="wrong user name or password", security_alert=True)
            else:
                token = auth.open_session(session, name, self.ctx.settings.admin_session_minutes)
                record(session, AuditEvent.USER_LOGIN, actor=name, address=address)
        if not ok:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "wrong user name or password")
        self._send(HTTPStatus.OK, {"token": token, "expires_in": int(self.ctx.settings.admin_session_minutes * 60)})

    def logout(self) -> None:
        with session_scope(self.ctx.sessions) as session:
            user = auth.close_session(session, self._token())
            if user is not None:
                record(session, AuditEvent.USER_LOGOUT, actor=user, address=self.client_address[0])
        if user is None:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "not logged in")
        self._send(HTTPStatus.NO_CONTENT)

    def studies(self, study_uid: str | None = None) -> None:
        self._user()
        rows = study_rows(self.ctx.sessions, study_uid)
        if study_uid and not rows:
            raise ApiError(HTTPStatus.NOT_FOUND, "no such study")
        self._send(HTTPStatus.OK, rows[0] if study_uid else {"disk": disk_status(self.ctx.settings), "studies": rows})

    def peers(self) -> None:
        self._user()
        with self.ctx.sessions() as session:
            stored = [p.model_dump() for p in config_store.list_peers(session)]
        self._send(HTTPStatus.OK, {"configured": [p.model_dump() for p in self.ctx.settings.known_peers],
                                   "stored": stored})

    def put_peer(self, ae_title: str) -> None:
        user = self._user()
        peer = Peer(ae_title=ae_title, **self._json())
        with session_scope(self.ctx.sessions) as session:
            config_store.put_peer(session, peer, user=user, address=self.client_address[0])
        self._send(HTTPStatus.OK, peer.model_dump())

    def delete_peer(self, ae_title: str) -> None:
        user = self._user()
        with session_scope(self.ctx.sessions) as session:
            found = config_store.delete_peer(session, ae_title, user=user, address=self.client_address[0])
        if not found:
            raise ApiError(HTTPStatus.NOT_FOUND, "no such peer")
        self._send(HTTPStatus.NO_CONTENT)

    def rules(self) -> None:
        self._user()
        with self.ctx.sessions() as session:
            stored = [r.model_dump() for r in config_store.list_rules(session)]
        self._send(HTTPStatus.OK, {"configured": [r.model_dump() for r in self.ctx.settings.rules],
                                   "stored": stored})

    def put_rule(self, name: str) -> None:
        user = self._user()
        rule = Rule(name=name, **self._json())
        with session_scope(self.ctx.sessions) as session:
            config_store.put_rule(session, rule, user=user, address=self.client_address[0])
        self._send(HTTPStatus.OK, rule.model_dump())

    def delete_rule(self, name: str) -> None:
        user = self._user()
        with session_scope(self.ctx.sessions) as session:
            found = config_store.delete_rule(session, name, user=user, address=self.client_address[0])
        if not found:
            raise ApiError(HTTPStatus.NOT_FOUND, "no such rule")
        self._send(HTTPStatus.NO_CONTENT)


_NAME = r"([A-Za-z0-9 _.\-]{1,64})"
ROUTES: list[tuple[str, str, Callable[..., None]]] = [
    ("GET", r"/healthz", Handler.health),
    ("GET", r"/metrics", Handler.prometheus),
    ("POST", r"/api/login", Handler.login),
    ("POST", r"/api/logout", Handler.logout),
    ("GET", r"/api/studies", Handler.studies),
    ("GET", r"/api/studies/([0-9.]{1,64})", Handler.studies),
    ("GET", r"/api/peers", Handler.peers),
    ("PUT", r"/api/peers/" + _NAME, Handler.put_peer),
    ("DELETE", r"/api/peers/" + _NAME, Handler.delete_peer),
    ("GET", r"/api/rules", Handler.rules),
    ("PUT", r"/api/rules/" + _NAME, Handler.put_rule),
    ("DELETE", r"/api/rules/" + _NAME, Handler.delete_rule),
]


def start_admin(ctx: AdminContext) -> ThreadingHTTPServer:
    """Serve the admin API on ``admin_host:admin_port`` in a background thread."""
    handler = type("BoundHandler", (Handler,), {"ctx": ctx})
    server = ThreadingHTTPServer((ctx.settings.admin_host, ctx.settings.admin_port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="dicomnode-admin", daemon=True).start()
    return server
