"""C-STORE datasets arrive into files, not memory, on the spool's file system.

pynetdicom writes each incoming C-STORE dataset, fragment by fragment, to a temporary file in the DICOM
File Format (``STORE_RECV_CHUNKED_DATASET``; the handler gets ``event.dataset_path``) and removes it
after the handler returns. The node points those files at ``spool_dir/.incoming``, so that landing an
accepted instance is a rename within one file system (:func:`dicomnode.store.spool.adopt_file`), and a
refused one is simply not renamed. A dataset cut off while arriving (A-ABORT, lost connection) never
reaches the handler: :func:`discard_partial` removes its file when the connection closes.

Both switches are pynetdicom's and process-wide (``_config`` and the temporary-file factory its C-STORE
decoding uses): a receiving process holds one spool. Nothing else changes: :data:`tempfile.tempdir`
and every other temporary file of the process stay as they were.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import Any

from pynetdicom import _config, dimse_messages

from dicomnode.log import extra
from dicomnode.settings import Settings
from dicomnode.store.spool import make_private_dirs

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
    dimse_messages.NamedTemporaryFile = partial(NamedTemporaryFile, dir=folder)  # type: ignore[attr-defined,assignment]
    cutoff = time.time() - STALE_SECONDS
    for leftover in folder.iterdir():
        try:
            if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            log.warning("could not remove a stale incoming file", extra=extra(stage="receive"))
    return folder


def discard_partial(assoc: Any) -> None:
    """Close and remove the file of a dataset still arriving on ``assoc`` (when its connection closes).

    Once a message is complete, pynetdicom detaches it (and the handler owns its file), so a message
    still attached here was cut off. The DUL thread both writes the fragments and signals the close,
    so nothing writes to the file meanwhile.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    received = getattr(message, "_data_set_file", None)
    if received is not None:
        received.close()
    path = getattr(message, "_data_set_path", None)
    if isinstance(path, Path):
        path.unlink(missing_ok=True)
