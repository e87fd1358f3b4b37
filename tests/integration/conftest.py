from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.auth import hash_password
from dicomnode.receive.handlers import ReceiveContext
from dicomnode.receive.scp import start_scp
from dicomnode.settings import AdminUser, Peer, Settings
from tests.conftest import make_settings
from tests.support.admin import admin_server
from tests.support.heap import steady_heap
from tests.support.net import free_port


@dataclass
class RunningScp:
    settings: Settings
    sessions: sessionmaker[Session]
    servers: list[Any]

    @property
    def port(self) -> int:
        return self.settings.port


StartScp = Callable[..., RunningScp]


@pytest.fixture
def start_scp_with(sessions: sessionmaker[Session], settings: Settings) -> Iterator[StartScp]:
    """Start the node's real SCP on loopback ports, in this process; STORESCU and PYSCU are known peers.

    The test session's heap is out of the cyclic collector's reach while the SCP runs (as the node keeps
    its own, :mod:`tests.support.heap`): a full collection over it stalled stores for over a second."""
    running: list[RunningScp] = []

    def start(**overrides: Any) -> RunningScp:
        values: dict[str, Any] = {"host": "127.0.0.1", "port": free_port(), "min_free_disk_mb": 1,
                                  "peers": [Peer(ae_title="STORESCU", host="127.0.0.1"),
                                            Peer(ae_title="PYSCU", host="127.0.0.1")]}
        node_settings = make_settings(settings.data_dir, **{**values, **overrides})
        scp = RunningScp(node_settings, sessions, start_scp(ReceiveContext(settings=node_settings,
                                                                          sessions=sessions)))
        running.append(scp)
        return scp

    with steady_heap():
        yield start
    for scp in running:
        for server in scp.servers:
            server.shutdown()


@pytest.fixture
def scp(start_scp_with: StartScp) -> RunningScp:
    return start_scp_with()


IT_USERS = [AdminUser(name="it", password_hash=hash_password("s3cret-pass", 1000))]
Serve = Callable[..., str]


@pytest.fixture
def serve(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Serve]:
    """``serve(**settings)``: an admin server with these settings over the test's database, its one user
    "it" (password "s3cret-pass") unless they say otherwise; its base URL."""
    with ExitStack() as servers:
        def start(**overrides: Any) -> str:
            values: dict[str, Any] = {"admin_port": free_port(), "min_free_disk_mb": 1, "admin_users": IT_USERS}
            configured = make_settings(settings.data_dir, **{**values, **overrides})
            return servers.enter_context(admin_server(configured, sessions))

        yield start
