from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.receive.handlers import ReceiveContext
from dicomnode.receive.scp import start_scp
from dicomnode.settings import Peer, Settings
from tests.conftest import make_settings
from tests.support.net import free_port


@dataclass
class RunningScp:
    settings: Settings
    sessions: sessionmaker[Session]
    server: Any

    @property
    def port(self) -> int:
        return self.settings.port


@pytest.fixture
def scp(tmp_path: Path, sessions: sessionmaker[Session], settings: Settings) -> Iterator[RunningScp]:
    """The node's real SCP on a loopback port, in this process; STORESCU and PYSCU are known peers."""
    node_settings = make_settings(settings.data_dir, host="127.0.0.1", port=free_port(),
                                  peers=[Peer(ae_title="STORESCU", host="127.0.0.1"),
                                         Peer(ae_title="PYSCU", host="127.0.0.1")])
    server = start_scp(ReceiveContext(settings=node_settings, sessions=sessions))
    yield RunningScp(node_settings, sessions, server)
    server.shutdown()
