"""The spool: received instances under ``spool/<study>/<series>/<sop>.dcm``, moved in durably.

The durable-write helpers themselves (atomic write, folder fsync, owner-only folders) are
:mod:`dicomnode.files`; this module owns the spool's paths and the move of a received file into place.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicomnode.errors import StoreError
from dicomnode.files import make_private_dirs

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
