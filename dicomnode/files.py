"""Durable file helpers shared by every stage that writes: atomic writes, folder fsyncs, owner-only folders.

A file is written to a temporary name in its final folder, fsynced, renamed into place and the folder
fsynced, so that after a crash the path either holds the whole file or does not exist. Both fsyncs are
needed (the first makes the bytes durable, the second the name), but the second may be shared: the
receiver's group commit (:mod:`dicomnode.store.committer`) fsyncs each folder once for every instance
renamed into it since, before the database commit that records them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from dicomnode.errors import StoreError


def write_atomic(path: Path, data: bytes | Sequence[bytes], *, sync_dir: bool = True) -> str:
    """Write ``data`` (bytes, or parts written one after another) to ``path`` atomically; return its SHA-256.

    The file's bytes are fsynced before the rename; its folder too unless ``sync_dir`` is False, in which
    case the caller must :func:`fsync_dirs` the folder before it relies on the name.

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
        digest = hashlib.sha256()
        try:
            for part in [data] if isinstance(data, bytes) else data:
                digest.update(part)
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StoreError(f"could not write spool file: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def fsync_dirs(folders: Iterable[Path]) -> None:
    """Make the names renamed into ``folders`` durable: one fsync per folder, however many names."""
    for folder in set(folders):
        fsync_dir(folder)


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
        fsync_dir(each.parent)  # the new folder's own name must survive a crash too


def fsync_dir(folder: Path) -> None:
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
