"""The node's HTTP client (STOW-RS destinations, the remote cloud) is bounded in time: a server that takes
the connection and never answers, over HTTP or HTTPS, is a retryable "no answer" after
``network_timeout_seconds``, never a worker held for ever."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from dicomnode.errors import SendError
from dicomnode.send.stow import request
from dicomnode.settings import Settings
from tests.conftest import make_settings


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """A listening socket whose kernel completes the TCP handshake, and which never reads or answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_never_answers_is_a_retryable_no_answer(settings: Settings, silent: socket.socket,
                                                              scheme: str) -> None:
    configured = make_settings(settings.data_dir, network_timeout_seconds=0.5)
    with ThreadPoolExecutor(1) as pool:  # a request without its deadline fails this test, not hangs it
        asked = pool.submit(request, configured, "POST", f"{scheme}://127.0.0.1:{silent.getsockname()[1]}/dicomweb/studies",
                            body=b"x", headers={"Content-Type": "application/dicom"})
        try:
            error = asked.exception(timeout=30)
        except TimeoutError:
            silent.close()  # resets the waiting connection: the request's thread ends, and the test fails
            raise AssertionError("no deadline: the request was still waiting after 30 s") from None
    assert isinstance(error, SendError) and error.retryable is True
    assert re.fullmatch(r"127\.0\.0\.1: no answer \((TimeoutError|timeout)\)", str(error)), error
