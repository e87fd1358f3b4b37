"""README promises kept by the node as a whole process (docs/testing.md, "Promises and the tests that keep them")."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.jobs.models import Job
from dicomnode.jobs.status import JobStatus
from tests.support.models import write_threshold_model
from tests.support.net import wait_for
from tests.support.peers import REPO, NodeProcess, storescp, storescu
from tests.support.synthetic import make_series, write_series

pytestmark = pytest.mark.e2e


def _job_states(data_dir: Path) -> list[JobStatus]:
    engine = create_engine(f"sqlite:///{data_dir / 'dicomnode.db'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(select(Job.status)))
    finally:
        engine.dispose()


def _not_owner_only(data_dir: Path) -> list[str]:
    """Every path under ``data_dir`` (itself included) that a group or others may read, write or enter."""
    paths = [data_dir, *data_dir.rglob("*")]
    return sorted(f"{p.relative_to(data_dir.parent)} {stat.filemode(p.lstat().st_mode)}"
                  for p in paths if not p.is_symlink() and p.lstat().st_mode & 0o077)


def test_everything_a_node_started_under_umask_0_writes_is_owner_only(tmp_path: Path) -> None:
    """README, Audit: "The database, spool, results and exports are created owner-only" (and the anchor
    file). The node is started with a umask that masks nothing, so only what the node does itself counts:
    its own umask (cli.main) for what SQLite and the libraries create, and its explicit modes."""
    models = write_threshold_model(tmp_path / "models", 40.0).parent
    with storescp(tmp_path / "pacs", aet="PACS") as pacs_port:
        node = NodeProcess(tmp_path / "node", env={
            "DICOMNODE_PACS": f"PACS@127.0.0.1:{pacs_port}",
            "DICOMNODE_PEERS": "STORESCU@127.0.0.1:104",
            "DICOMNODE_MODELS_DIR": str(models),
            "DICOMNODE_STUDY_IDLE_SECONDS": "1",
            "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.3",
            "DICOMNODE_WORKER_POLL_SECONDS": "0.2",
            "DICOMNODE_MIN_FREE_DISK_MB": "1",
        })
        previous = os.umask(0)  # the child inherits it
        try:
            node.start()
        finally:
            os.umask(previous)
        try:
            series = make_series(n_slices=8, rows=16, columns=16, series_description="CRASHTEST T1")
            result = storescu(node.port, write_series(series, tmp_path / "in"), called=node.ae_title)
            assert result.returncode == 0, result.stderr
            wait_for(lambda: _job_states(node.data_dir) == [JobStatus.SUCCEEDED], timeout=120,
                     msg="the job delivered")
        finally:
            assert node.stop() == 0  # at stop the anchor gets its last checkpoint
        export = tmp_path / "export" / "trail.json"
        export.parent.mkdir(mode=0o700)
        exported = subprocess.run(
            [sys.executable, "-m", "dicomnode", "audit", "export", "--format", "json", "--output", str(export)],
            cwd=REPO, env={**os.environ, "DICOMNODE_DATA_DIR": str(node.data_dir)}, umask=0,
            capture_output=True, text=True, timeout=120)
        assert exported.returncode == 0, exported.stderr

    data = node.data_dir
    written = {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()}
    # what the promise is about is there to be judged: database, anchor, spool files, result files
    assert "dicomnode.db" in written and "audit-anchor.jsonl" in written, written
    assert any(p.startswith("spool/") and p.endswith(".dcm") for p in written), written
    assert any(p.startswith("results/") and p.endswith(".dcm") for p in written), written
    assert _not_owner_only(data) == []
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
