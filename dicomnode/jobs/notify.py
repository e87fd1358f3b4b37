"""Workers learn of new jobs at once: an in-process event, and PostgreSQL LISTEN/NOTIFY across processes.

The sweep that queues jobs sets the local :class:`threading.Event` (all-in-one ``serve``) and, on
PostgreSQL, sends ``NOTIFY dicomnode_jobs`` after its commit; a :class:`Listener` in each ``work``
process sets that process's event when the notification arrives. Polling every
``worker_poll_seconds`` remains, for scheduled retries and for a missed notification (a listener
reconnecting).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope
from dicomnode.log import extra

log = logging.getLogger(__name__)

CHANNEL = "dicomnode_jobs"


def is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


def announce(sessions: sessionmaker[Session], wake: threading.Event | None) -> None:
    """Tell workers that jobs were queued: this process's event, and other processes' listeners."""
    if wake is not None:
        wake.set()
    try:
        with session_scope(sessions) as session:
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text(f"NOTIFY {CHANNEL}"))
    except SQLAlchemyError:
        log.warning("could not notify workers; they find the job by polling", extra=extra(stage="sweep"))


class Listener:
    """A thread that holds a LISTEN connection and sets ``wake`` on every notification."""

    def __init__(self, database_url: str, wake: threading.Event) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicomnode-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg  # the "postgres" extra: only a PostgreSQL node imports it

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.wake.set()  # anything queued while not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.wake.set()
            except psycopg.Error:
                log.warning("job notifications lost; reconnecting", extra=extra(stage="worker"))
                self._stop.wait(2.0)
