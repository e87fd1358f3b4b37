"""Serving the admin app with uvicorn in a background thread, with limits no client can get around.

- A client must send a whole request, headers and body, within ``admin_request_timeout_seconds`` of
  connecting (or of its previous answer); otherwise it is disconnected. Half-sent requests hold a
  socket for that long at most, and no thread at all (the server is one asyncio loop).
- A body longer than ``admin_max_body_bytes`` (``admin_max_upload_bytes`` for the rule tester's
  upload) is refused with 413: at once when ``Content-Length``
  says so, and as soon as it has grown past the limit when it is chunked. A malformed
  ``Content-Length`` (``-1``) is a 400 from the HTTP parser.
- At most ``admin_max_connections`` requests are handled at once (from the arrival of their headers to
  the end of their answer); more get 503. Connections that are idle or still sending their headers do
  not count: they cost a socket until their deadline, and no work. Health, readiness and metrics
  (:data:`HEALTH_PATHS`) have a budget of their own (:data:`HEALTH_BUDGET`), so that a monitor's probe
  is answered while slow clients fill the rest.
- DICOMweb (``/dicomweb/``) takes larger bodies and longer: ``dicomweb_max_body_bytes`` and
  ``dicomweb_request_timeout_seconds``, counted from the arrival of the request's headers.
- ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only from ``admin_trusted_proxies``
  (uvicorn's proxy headers, which would otherwise trust loopback): with none, the client is the socket's
  peer, whatever it says, so that the login throttle and the audit trail see real addresses.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import h11
import uvicorn
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from dicomnode.settings import Settings


class BodyTooLarge(HTTPException):
    """Raised while the app reads a body that grew past the limit; the app answers 413."""

    def __init__(self) -> None:
        super().__init__(413, "request body too large")


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for receiving each whole request."""

    request_timeout: float = 10.0  # set on the subclass made by :func:`start_server`
    upload_prefix: str = "/dicomweb/"
    upload_timeout: float = 600.0
    _deadline: asyncio.TimerHandle | None = None
    _extended = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self, seconds: float | None = None) -> None:
        self._disarm()
        self._extended = seconds is not None
        self._deadline = self.loop.call_later(seconds or self.request_timeout, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.conn.their_state is not h11.DONE and not self.transport.is_closing():
            self.transport.close()  # still sending its request after the deadline

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is h11.DONE:  # the whole request is in: the app has it now
            self._disarm()
        elif (self.conn.their_state is h11.SEND_BODY and not self._extended and self._deadline is not None
              and str(getattr(self, "scope", {}).get("path", "")).startswith(self.upload_prefix)):
            self._arm(self.upload_timeout)  # an upload: its own, longer deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, before the app reads past the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = uploads or {}  # paths (or prefixes, ending in "/") that take uploads, with their own limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.uploads.get(path) or next((v for k, v in self.uploads.items()
                                                if k.endswith("/") and path.startswith(k)), self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send)


async def _too_large(send: Send) -> None:
    body = json.dumps({"detail": "request body too large"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
HEALTH_BUDGET = 8  # health, readiness and metrics requests handled at once, beside admin_max_connections


class Capacity:
    """ASGI middleware: at most ``max_requests`` requests in the app at once, and :data:`HEALTH_BUDGET`
    more for :data:`HEALTH_PATHS`; beyond either, 503 at once. Only requests being handled count (uvicorn
    calls the app once a request's headers have arrived). The counts are the event loop's own: no lock."""

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.budgets = {False: max_requests, True: HEALTH_BUDGET}
        self.busy = {False: 0, True: 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        health = scope["path"] in HEALTH_PATHS
        if self.busy[health] >= self.budgets[health]:
            await _unavailable(send)
            return
        self.busy[health] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.busy[health] -= 1


async def _unavailable(send: Send) -> None:
    body = json.dumps({"detail": "too many requests being handled; try again shortly"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class AdminServer:
    """A running uvicorn server; :meth:`shutdown` stops it and waits."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, thread: threading.Thread) -> None:
        self._server = server
        self._sock = sock
        self._thread = thread
        self.port: int = sock.getsockname()[1]

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def server_close(self) -> None:
        self._sock.close()


def start_server(app: Any, settings: Settings) -> AdminServer:
    """Bind ``admin_host:admin_port`` now (errors surface here) and serve ``app`` from a thread."""
    protocol = type("Protocol", (BoundedH11Protocol,), {"request_timeout": settings.admin_request_timeout_seconds,
                                                        "upload_timeout": settings.dicomweb_request_timeout_seconds})
    uploads = {"/ui/rules/test": settings.admin_max_upload_bytes, "/dicomweb/": settings.dicomweb_max_body_bytes}
    bounded = Capacity(BodyLimit(app, settings.admin_max_body_bytes, uploads), settings.admin_max_connections)
    # factory=True: uvicorn calls the factory for the app, rather than calling the app with no arguments to
    # find out whether it is one (which an instrumented __call__, mutmut's, answers with a coroutine)
    config = uvicorn.Config(lambda: bounded, factory=True, http=protocol, lifespan="off", log_config=None,
                            access_log=False,
                            server_header=False,  # no limit_concurrency: it counts idle connections too
                            proxy_headers=bool(settings.admin_trusted_proxies),
                            forwarded_allow_ips=list(settings.admin_trusted_proxies) or None,
                            timeout_keep_alive=5, timeout_graceful_shutdown=5)
    family = socket.AF_INET6 if ":" in settings.admin_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.admin_host, settings.admin_port))
    sock.listen(socket.SOMAXCONN)  # as the DICOM listener: a burst of connections is not dropped
    sock.setblocking(False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dicomnode-admin", daemon=True)
    thread.start()
    return AdminServer(server, sock, thread)
