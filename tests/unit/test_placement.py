"""Placement per model: local, remote, or prefer-local (remote when not installed or the queue is long)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import ModelError
from dicomnode.inference.registry import Manifest
from dicomnode.remote.backend import goes_remote, installed, remote_backend, runs_remote
from dicomnode.settings import Settings
from tests.support.models import write_threshold_model
from tests.support.spooled import queue_job, spool
from tests.support.synthetic import make_series


def _manifest(folder: Path, remote: str) -> Manifest:
    model = write_threshold_model(folder, 40.0)
    if remote:
        with open(model / "manifest.toml", "a") as manifest:
            manifest.write(f'\n[remote]\nurl = "https://cloud.example.org"\nuser = "edge"\n'
                           f'password_file = "/nonexistent"\n{remote}\n')
    return Manifest.read(model / "manifest.toml")


def _queue(settings: Settings, sessions: sessionmaker[Session], jobs: int) -> None:
    for _ in range(jobs):
        series = make_series(n_slices=4, rows=8, columns=8)
        spool(settings, sessions, series)
        queue_job(sessions, str(series[0].SeriesInstanceUID))


def test_no_remote_table_means_local(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    manifest = _manifest(tmp_path, "")
    assert remote_backend(manifest) is None and not goes_remote(manifest, None, sessions)


@pytest.mark.parametrize(("placement", "expected"), [("local", False), ("remote", True), ("prefer-local", False)])
def test_an_installed_model_with_a_short_queue(tmp_path: Path, sessions: sessionmaker[Session], placement: str,
                                               expected: bool) -> None:
    manifest = _manifest(tmp_path, f'placement = "{placement}"')
    assert installed(manifest)
    assert goes_remote(manifest, remote_backend(manifest), sessions) is expected
    # where the job runs follows (an MR series: nothing burned in that would keep it here)
    series = make_series(n_slices=2, rows=8, columns=8)
    assert runs_remote(manifest, remote_backend(manifest), sessions, series) is expected
    assert runs_remote(manifest, None, sessions, series) is False  # no backend: here


def test_prefer_local_goes_remote_when_the_model_is_missing(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    manifest = _manifest(tmp_path, 'placement = "prefer-local"')
    (manifest.directory / "model.onnx").unlink()
    assert not installed(manifest) and goes_remote(manifest, remote_backend(manifest), sessions)


def test_prefer_local_goes_remote_when_the_queue_is_long(tmp_path: Path, settings: Settings,
                                                         sessions: sessionmaker[Session]) -> None:
    manifest = _manifest(tmp_path, 'placement = "prefer-local"\nmax_local_queue = 2')
    backend = remote_backend(manifest)
    _queue(settings, sessions, 2)
    assert not goes_remote(manifest, backend, sessions)
    _queue(settings, sessions, 1)
    assert goes_remote(manifest, backend, sessions)


def test_prefer_local_with_no_local_queue_goes_remote_once_a_job_waits(tmp_path: Path, settings: Settings,
                                                                        sessions: sessionmaker[Session]) -> None:
    """``max_local_queue = 0``: local while no job of the model waits here, remote once one does."""
    manifest = _manifest(tmp_path, 'placement = "prefer-local"\nmax_local_queue = 0')
    backend = remote_backend(manifest)
    assert not goes_remote(manifest, backend, sessions)
    _queue(settings, sessions, 1)
    assert goes_remote(manifest, backend, sessions)


def test_an_invalid_remote_table_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"remote\.placement"):
        _manifest(tmp_path, 'placement = "somewhere"')


def test_local_stays_local_with_the_model_missing_and_a_long_queue(tmp_path: Path, settings: Settings,
                                                                   sessions: sessionmaker[Session]) -> None:
    """``placement = "local"``: the remote table is there but never used, whatever would send a
    prefer-local job away (here both: the model's file missing, and more jobs waiting than the limit)."""
    manifest = _manifest(tmp_path, 'placement = "local"\nmax_local_queue = 0')
    (manifest.directory / "model.onnx").unlink()
    _queue(settings, sessions, 2)
    backend = remote_backend(manifest)
    assert backend is not None and not goes_remote(manifest, backend, sessions)
