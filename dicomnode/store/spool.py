"""Atomic, durable writes of received instances under ``spool/<study>/<series>/<sop>.dcm``.

A file is written to a temporary name in its final folder, fsynced, renamed into place and the folder
fsynced, so that after a crash a spool path either holds the whole instance or does not exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
from pathlib import Path

from dicomnode.errors import StoreError

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def clean_uid(value: object) -> str:
    """Return ``value`` as a valid UID (PS3.5 9.1) or raise :class:`ValueError` naming it.

    Trailing NUL and space padding, as some devices send, is removed first.
    """
    text = str(value or "").rstrip("\x00 ").strip()
    if not text or len(text) > 64 or not _UID_RE.match(text):
        raise ValueError(f"{text[:80]!r} is not a valid UID")
    return text


def spool_path(spool_dir: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """The spool path of an instance; every UID must already be :func:`clean_uid`-checked."""
    return spool_dir / study_uid / series_uid / f"{sop_uid}.dcm"


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` durably and atomically; return its SHA-256 hex digest.

    Raises
    ------
    StoreError
        When the bytes could not be made durable (disk full, permissions, I/O error); no partial file
        is left behind.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        make_private_dirs(path.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StoreError(f"could not write spool file: {exc.strerror or exc}") from exc
    return hashlib.sha256(data).hexdigest()


def make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and each missing parent owner-only (0o700), whatever the umask.

    ``Path.mkdir(parents=True, mode=...)`` gives the mode to the last folder only; the parents, named
    by study and series UIDs, would be left to the umask.
    """
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another thread made it meanwhile
            each.mkdir(mode=0o700)
        os.chmod(each, 0o700)  # mkdir's mode is masked by the umask


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(folder: Path) -> int:
    """Free space on the file system holding ``folder`` (or its nearest existing parent)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
