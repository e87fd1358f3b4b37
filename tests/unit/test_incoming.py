"""pynetdicom's C-STORE datasets arrive into files in the spool's ``.incoming`` folder, owner-only, on the
spool's file system (so that landing is a rename); a crash's leftovers there are removed at start."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from pynetdicom import _config, dimse_messages

from dicomnode.receive.incoming import STALE_SECONDS, receive_into_files
from dicomnode.settings import Settings


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's process-wide switches as they were before the test, after it."""
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", _config.STORE_RECV_CHUNKED_DATASET)


@pytest.mark.usefixtures("restored")
def test_pynetdicoms_incoming_datasets_are_files_in_the_spools_incoming_folder(settings: Settings) -> None:
    folder = receive_into_files(settings)
    assert folder == settings.spool_dir / ".incoming" and _config.STORE_RECV_CHUNKED_DATASET is True
    with dimse_messages.NamedTemporaryFile(mode="w+b", suffix=".dcm") as received:  # as pynetdicom makes one
        path = Path(received.name)
        assert path.parent == folder
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.exists()


@pytest.mark.usefixtures("restored")
def test_leftovers_older_than_a_day_are_removed_at_start_and_newer_ones_kept(settings: Settings) -> None:
    folder = settings.spool_dir / ".incoming"
    folder.mkdir(parents=True)
    old, new = folder / "old.dcm", folder / "new.dcm"
    old.write_bytes(b"cut off by a crash")
    new.write_bytes(b"arriving on another process's association")
    then = time.time() - STALE_SECONDS - 60
    os.utime(old, (then, then))
    receive_into_files(settings)
    assert sorted(p.name for p in folder.iterdir()) == ["new.dcm"]


@pytest.mark.usefixtures("restored")
def test_a_second_start_on_the_same_spool_keeps_the_factory_and_what_it_tracks(settings: Settings) -> None:
    """A receiving role started again in the process (the node's roles share one spool) keeps pynetdicom's
    file factory, so that the files of associations in flight stay known to it and are removed with them."""
    receive_into_files(settings)
    first = dimse_messages.NamedTemporaryFile
    receive_into_files(settings)
    assert dimse_messages.NamedTemporaryFile is first
