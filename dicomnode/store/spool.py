"""Atomic, durable writes of received instances under ``spool/<study>/<series>/<sop>.dcm``.

A file is written to a temporary name in its final folder, fsynced, renamed into place and the folder
fsynced, so that after a crash a spool path either holds the whole instance or does not exist. Both
fsyncs are needed (the first makes the bytes durable, the second the name), but the second may be
shared: the receiver's group commit (:mod:`dicomnode.store.committer`) fsyncs each folder once for every
instance renamed into it since, before the database commit that records them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
            _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StoreError(f"could not write spool file: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def fsync_dirs(folders: Iterable[Path]) -> None:
    """Make the names renamed into ``folders`` durable: one fsync per folder, however many names."""
    for folder in set(folders):
        _fsync_dir(folder)


@dataclass(frozen=True)
class Written:
    """A complete file whose writer hashes and fsyncs it elsewhere: ``digest()`` waits for its SHA-256
    and size, ``durable()`` until its bytes are on disk; both raise OSError when that failed."""

    digest: Callable[[], tuple[str, int]]
    durable: Callable[[], object]


def adopt_file(source: Path, path: Path, written: Written | None = None, *, early: bool = False) -> tuple[str, int]:
    """Move the complete file ``source`` to ``path``: fsynced, then renamed over whatever was there
    (``source`` must be on the spool's file system); return its SHA-256 and size. The caller fsyncs
    the folder (:func:`fsync_dirs`) before it relies on the name.

    Given ``written``, its digest and fsync, running elsewhere, are waited for instead of done here;
    with ``early``, only its digest: the file is renamed while its fsync runs. Only for a new path,
    and only when no row will name it before ``written.durable()`` returned (the group commit waits for
    it): a crash meanwhile can leave a name with no row and no acknowledgement, never a row, or an older
    instance's file, with torn bytes.

    Raises
    ------
    StoreError
        When the file could not be made durable or moved; ``path`` is then left as it was.
    """
    try:
        if written is None:
            with open(source, "rb") as received:
                digest = hashlib.file_digest(received, "sha256").hexdigest()  # read and hashed in C, one buffer
                size = os.fstat(received.fileno()).st_size
                os.fsync(received.fileno())
            os.chmod(source, 0o600)
        else:  # its writer created it owner-only
            digest, size = written.digest()
            if not early:
                written.durable()
        make_private_dirs(path.parent)
        os.replace(source, path)
    except OSError as exc:
        raise StoreError(f"could not move the received file into the spool: {exc.strerror or exc}") from exc
    return digest, size


def remove_new_file(path: Path, spool_dir: Path) -> None:
    """Remove a refused instance's new file and the folders that held only it, up to ``spool_dir``."""
    path.unlink(missing_ok=True)
    folder = path.parent
    while folder != spool_dir and folder.is_relative_to(spool_dir):
        try:
            folder.rmdir()  # only when empty: another instance's folder stays
        except OSError:
            return
        folder = folder.parent


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
        _fsync_dir(each.parent)  # the new folder's own name must survive a crash too


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
