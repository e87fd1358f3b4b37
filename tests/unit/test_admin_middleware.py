"""The admin server's ASGI middleware (``admin.server.BodyLimit``, ``admin.server.Capacity``): what they do
not limit reaches the application whole, messages and all."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from dicomnode.admin.server import BodyLimit, Capacity

MIDDLEWARE = {"body limit": lambda app: BodyLimit(app, 10), "capacity": lambda app: Capacity(app, 1)}


@pytest.mark.parametrize("middleware", MIDDLEWARE)
def test_a_scope_that_is_not_http_reaches_the_app_with_its_own_receive_and_send(middleware: str) -> None:
    seen: list[Message] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        await send({"type": "websocket.close", "code": 1000})

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(MIDDLEWARE[middleware](app)({"type": "websocket", "path": "/ws", "headers": []}, receive, send))
    assert seen == [{"type": "websocket.connect"}]
    assert sent == [{"type": "websocket.close", "code": 1000}]


@pytest.mark.parametrize("middleware", MIDDLEWARE)
def test_a_small_http_body_reaches_the_app_whole(middleware: str) -> None:
    bodies: list[bytes] = []
    sent: list[Message] = []
    chunks = iter([{"type": "http.request", "body": b"abc", "more_body": True},
                   {"type": "http.request", "body": b"de", "more_body": False}])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            bodies.append(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return next(chunks)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/api/x", "headers": [(b"content-length", b"5")]}  # 5 of 10 bytes
    asyncio.run(MIDDLEWARE[middleware](app)(scope, receive, send))
    assert bodies == [b"abc", b"de"]
    assert [m.get("status") for m in sent] == [204, None]
