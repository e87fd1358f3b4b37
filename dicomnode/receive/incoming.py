"""C-STORE datasets arrive into files, not memory, on the spool's file system.

pynetdicom writes each incoming C-STORE dataset, fragment by fragment, to a temporary file in the DICOM
File Format (``STORE_RECV_CHUNKED_DATASET``; the handler gets ``event.dataset_path``) and removes it
after the handler returns. The node points those files at ``spool_dir/.incoming``, so that landing an
accepted instance is a rename within one file system (:func:`dicomnode.store.spool.adopt_file`), and a
refused one is simply not renamed. A dataset cut off while arriving (A-ABORT, lost connection) never
reaches the handler, nor does one pynetdicom cannot serve: :func:`discard_partial` removes their files
when the connection closes.

Both switches are pynetdicom's and process-wide (``_config`` and the temporary-file factory its C-STORE
decoding uses): a receiving process holds one spool. Nothing else changes: :data:`tempfile.tempdir`
and every other temporary file of the process stay as they were.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import IO, Any

from pynetdicom import _config, dimse_messages

from dicomnode.files import make_private_dirs
from dicomnode.log import extra
from dicomnode.settings import Settings

log = logging.getLogger(__name__)

INCOMING = ".incoming"
STALE_SECONDS = 24 * 3600  # a file this old belongs to no live association (a crash's leftover)


def incoming_dir(settings: Settings) -> Path:
    return settings.spool_dir / INCOMING


def receive_into_files(settings: Settings) -> Path:
    """Make incoming datasets go to files in :func:`incoming_dir` (owner-only); remove stale ones."""
    folder = incoming_dir(settings)
    make_private_dirs(folder)
    _config.STORE_RECV_CHUNKED_DATASET = True
    current = getattr(dimse_messages, "NamedTemporaryFile", None)
    if not (isinstance(current, _IncomingFiles) and current.folder == folder):
        dimse_messages.NamedTemporaryFile = _IncomingFiles(folder)  # type: ignore[attr-defined,assignment]
    cutoff = time.time() - STALE_SECONDS
    for leftover in folder.iterdir():
        try:
            if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            log.warning("could not remove a stale incoming file", extra=extra(stage="receive"))
    return folder


class _IncomingFiles:
    """pynetdicom's temporary-file factory for C-STORE datasets, in :func:`incoming_dir`, remembering
    which association each file is for (it is created on that association's DUL thread)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: dict[Any, list[IO[bytes]]] = {}
        self._lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> IO[bytes]:
        received: IO[bytes] = NamedTemporaryFile(dir=self.folder, **kwargs)
        assoc = getattr(threading.current_thread(), "assoc", None)
        if assoc is not None:
            with self._lock:
                files = self._open.setdefault(assoc, [])
                files[:] = [f for f in files if not f.closed]  # served: closed (and removed) by pynetdicom
                files.append(received)
        return received

    def discard(self, assoc: Any) -> None:
        with self._lock:
            files = self._open.pop(assoc, [])
        for received in files:
            received.close()
            Path(received.name).unlink(missing_ok=True)


def discard_partial(assoc: Any) -> None:
    """Once ``assoc``'s connection has closed, close and remove every file pynetdicom received a dataset
    into for it and that is still there: renamed into the spool, or removed after its handler, a file is
    gone already; one still here was cut off while it arrived, or was never handed to a handler (pynetdicom
    drops a message it cannot serve, or one queued when the association ends, with its file). A handler
    still running has no connection left to answer on. Runs on the association's DUL thread, which also
    writes the fragments."""
    factory = getattr(dimse_messages, "NamedTemporaryFile", None)
    if isinstance(factory, _IncomingFiles):
        factory.discard(assoc)
