"""The node's HTTP client (STOW-RS destinations, the remote cloud) is bounded in time: a server that takes
the connection and never answers, over HTTP or HTTPS, is a retryable "no answer" after
``network_timeout_seconds``, never a worker held for ever."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dicomnode.errors import SendError
from dicomnode.send.stow import request
from dicomnode.settings import Settings
from tests.conftest import make_settings


@pytest.fixture
def silent() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake and whose server never reads or answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_never_answers_is_a_retryable_no_answer(settings: Settings, silent: int, scheme: str) -> None:
    configured = make_settings(settings.data_dir, network_timeout_seconds=0.5)
    with pytest.raises(SendError, match=r"^127\.0\.0\.1: no answer \((TimeoutError|timeout)\)$") as caught:
        request(configured, "POST", f"{scheme}://127.0.0.1:{silent}/dicomweb/studies", body=b"x",
                headers={"Content-Type": "application/dicom"})
    assert caught.value.retryable is True
