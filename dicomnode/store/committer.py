"""Group commit of received instances: one folder fsync and one database commit for many instances.

Each association's handler writes and fsyncs its instance's file (in its own thread, in parallel with
the others), then hands a :class:`Receipt` to the committer and waits. A batch takes every receipt that
is waiting, fsyncs each of their spool folders once (the renames become durable; in a thread of its own,
while the statements run, and before the commit), records them all in one transaction and commits;
only then do their handlers answer 0x0000. Concurrent associations thus share fsyncs and commits,
and one batch at a time writes receipts, so associations never queue on
SQLite's write lock. An instance is acknowledged only after its bytes, its name
and its database row are all durable, exactly as with one transaction per instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope
from dicomnode.errors import UidCollision
from dicomnode.files import fsync_dirs
from dicomnode.log import extra
from dicomnode.store.index import InstanceMeta, record_instance
from dicomnode.store.ownership import NOT_OWNED, claim, may_add

log = logging.getLogger(__name__)

MAX_BATCH = 64


@dataclass(frozen=True)
class Receipt:
    """An instance whose file is written and fsynced, waiting for its name and row to be made durable."""

    meta: InstanceMeta
    path: Path
    sha256: str
    size: int
    calling_ae: str
    calling_address: str
    durable: Callable[[], object] | None = None  # waits until the file's bytes are on disk (renamed early)
    actor: str | None = None  # who the audit names for a new study (default: ``calling_ae``)
    sender: str | None = None  # a STOW-RS sender, whose study it must be (:mod:`dicomnode.store.ownership`)
    admin: bool = False


@dataclass(frozen=True)
class Recorded:
    """The committer's answer: ``changed`` when recorded, else the collision (``not_owned``: the study is
    not the sender's) or error that stopped it."""

    changed: bool = False
    collision: str = ""
    not_owned: bool = False
    spool_error: str = ""
    db_error: str = ""


class GroupCommitter:
    """Leader/follower group commit: :meth:`record` returns once the receipt's batch has committed.

    No thread of its own: the first handler to find the committer idle becomes the leader and commits
    every receipt waiting, its own included, while those that arrive meanwhile wait for the next batch
    (whose leader is one of them). One association alone thus commits in its own thread, without a
    hand-over, and concurrent ones share fsyncs and commits.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._pending: list[tuple[Receipt, list[Recorded]]] = []
        self._cond = threading.Condition()
        self._busy = False
        self._folders = ThreadPoolExecutor(max_workers=1, thread_name_prefix="folder-fsync")  # one leader at a time

    def record(self, receipt: Receipt) -> Recorded:
        box: list[Recorded] = []  # filled by whichever leader commits this receipt
        with self._cond:
            self._pending.append((receipt, box))
            while not box:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._cond.release()
                try:
                    results = self._commit_safely([r for r, _ in batch])
                finally:
                    self._cond.acquire()
                    self._busy = False
                for (_, each), result in zip(batch, results, strict=True):
                    each.append(result)
                self._cond.notify_all()
        return box[0]

    def _commit_safely(self, receipts: list[Receipt]) -> list[Recorded]:
        try:
            results = self._commit(receipts)
            if len(receipts) > 1 and any(r.db_error or r.spool_error for r in results):  # one bad one spoils no other
                results = [self._commit([receipt])[0] for receipt in receipts]
        except Exception:  # a leader never leaves its followers without an answer
            log.exception("group commit failed unexpectedly", extra=extra(stage="receive"))
            results = [Recorded(db_error="unexpected error")] * len(receipts)
        return results

    def _commit(self, receipts: list[Receipt]) -> list[Recorded]:
        # the folders' fsync runs beside the statements; the commit waits for it, so that a committed
        # row always names a durable file
        names = self._folders.submit(fsync_dirs, [r.path.parent for r in receipts])
        results = []
        try:
            with session_scope(self.sessions) as session:
                for r in receipts:
                    if not may_add(session, r.meta, r.sender, r.admin):  # raced in since the landing's check
                        results.append(Recorded(collision=NOT_OWNED, not_owned=True))
                        continue
                    try:  # record_instance checks before it changes anything: the batch goes on
                        changed = record_instance(session, r.meta, path=str(r.path), sha256=r.sha256,
                                                  size=r.size, calling_ae=r.calling_ae,
                                                  calling_address=r.calling_address, actor=r.actor)
                    except UidCollision as exc:
                        results.append(Recorded(collision=str(exc)))
                    else:
                        claim(session, r.meta, r.sender)
                        results.append(Recorded(changed=changed))
                names.result()  # raises the fsync's OSError: rolled back
                for r in receipts:  # a file renamed while its fsync ran: its bytes first
                    if r.durable is not None:
                        r.durable()
        except OSError as exc:
            return [Recorded(spool_error=f"could not write spool file: {exc.strerror or exc}")] * len(receipts)
        except SQLAlchemyError as exc:
            wait([names])
            return [Recorded(db_error=f"database error: {type(exc).__name__}")] * len(receipts)
        return results
