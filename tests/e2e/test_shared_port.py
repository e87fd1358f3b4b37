"""Two ``dicomnode receive`` processes on one port (``share_port``: SO_REUSEPORT), one database and spool.

The kernel hands each association to one of them: every instance sent is recorded once, both processes
serve, and when one stops the other goes on accepting on the same port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from dicomnode.jobs.models import Instance
from tests.support.models import write_threshold_model
from tests.support.net import free_port
from tests.support.peers import REPO, NodeProcess, storescu
from tests.support.synthetic import make_series, write_series

pytestmark = pytest.mark.e2e

ASSOCIATIONS = 24  # each process misses all of them with probability 2 x 2^-24


def _accepted(node: NodeProcess) -> int:
    return node.log_path.read_text(errors="replace").count("association accepted")


def _send(port: int, folder: Path, index: int) -> None:
    series = make_series(n_slices=2, rows=8, columns=8, patient_id=f"SHARED-{index:03d}")
    result = storescu(port, write_series(series, folder), called="DICOMNODE")
    assert result.returncode == 0, result.stderr


def test_two_receivers_share_one_port(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "DICOMNODE_DATA_DIR": str(tmp_path / "shared"),
        "DICOMNODE_PEERS": "STORESCU@127.0.0.1:104",
        "DICOMNODE_MODELS_DIR": str(write_threshold_model(tmp_path / "models", 40.0).parent),
        "DICOMNODE_MIN_FREE_DISK_MB": "1",
        "DICOMNODE_SHARE_PORT": "true",
    }
    first = NodeProcess(tmp_path / "first", env, port=port, command="receive").start()
    second = NodeProcess(tmp_path / "second", env, port=port, command="receive").start()
    try:
        # the port was already open: wait for the second's own start, which fails if it cannot bind
        second.wait_started()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: _send(port, tmp_path / "in" / str(i), i), range(ASSOCIATIONS)))
        engine = create_engine(f"sqlite:///{tmp_path / 'shared' / 'dicomnode.db'}")
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Instance)) == 2 * ASSOCIATIONS
        by_first, by_second = _accepted(first), _accepted(second)
        assert by_first + by_second == ASSOCIATIONS
        assert by_first > 0 and by_second > 0, f"one process served all: {by_first} / {by_second}"

        assert first.stop(signal.SIGTERM) == 0
        for i in range(ASSOCIATIONS, ASSOCIATIONS + 3):  # the port stays open: the other accepts
            _send(port, tmp_path / "in" / str(i), i)
        assert _accepted(second) == by_second + 3
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Instance)) == 2 * (ASSOCIATIONS + 3)
        engine.dispose()
    finally:
        first.stop()
        second.stop()


def test_a_second_receiver_without_share_port_cannot_bind(tmp_path: Path) -> None:
    """Without the setting (the default) a second process on the same port stops at start-up, saying why."""
    port = free_port()
    env = {"DICOMNODE_DATA_DIR": str(tmp_path / "shared"), "DICOMNODE_PEERS": "STORESCU@127.0.0.1:104",
           "DICOMNODE_MODELS_DIR": str(write_threshold_model(tmp_path / "models", 40.0).parent)}
    first = NodeProcess(tmp_path / "first", env, port=port, command="receive").start()
    try:
        second = subprocess.run([sys.executable, "-m", "dicomnode", "receive"], cwd=REPO, capture_output=True,
                                text=True, timeout=120, check=False,
                                env={**os.environ, **env, "DICOMNODE_HOST": "127.0.0.1", "DICOMNODE_PORT": str(port)})
        assert second.returncode != 0
        assert "Address already in use" in second.stdout + second.stderr
        assert first.process is not None and first.process.poll() is None  # the first serves on
    finally:
        first.stop()
