"""ATNA transport: audit messages as RFC 5424 syslog over UDP, TCP (RFC 6587 octet counting) or TLS (RFC 5425).

The forwarder reads the audit table after a cursor kept in the database, sends each row's DICOM audit
message, and moves the cursor on only after a successful send. It runs in its own thread and never
touches ingest: while the repository is down, messages wait in the trail and go out when it is back,
also across restarts. Delivery is at least once (a crash between send and cursor update repeats one
message). UDP cannot tell a lost message; use TCP or TLS where that matters.

The trail's checkpoints (:mod:`dicomnode.audit.anchor`) go out in the same stream, after the rows
pending when they are taken. They wait in memory (the newest ``PENDING_CHECKPOINTS``) while the
repository is down; the anchor file keeps every one of them either way.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.anchor import Checkpoint
from dicomnode.audit.atna import Source, audit_message, checkpoint_message, event_datetime
from dicomnode.audit.models import AuditCursor, AuditRecord
from dicomnode.db import session_scope, utcnow
from dicomnode.log import extra
from dicomnode.net.tls import client_context
from dicomnode.settings import Settings

log = logging.getLogger(__name__)

CURSOR = "atna"
# RFC 5424 PRI: facility 10 (security/authorization, "authpriv") * 8 + severity 5 (notice)
PRI = 10 * 8 + 5
MSGID = "IHE+RFC-3881"  # as IHE ITI TF-2a 3.20.6 asks for DICOM audit messages
BOM = b"\xef\xbb\xbf"
PENDING_CHECKPOINTS = 100


@dataclass(frozen=True)
class Repository:
    scheme: str  # udp, tcp or tls
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Repository:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp", "tls") or not parts.hostname or not parts.port:
            raise ValueError(f"audit repository {url!r} must look like udp://, tcp:// or tls://host:port")
        return cls(parts.scheme, parts.hostname, parts.port)


def syslog_message(xml: bytes, at_iso: str, hostname: str, app: str = "dicomnode") -> bytes:
    """One RFC 5424 message: header, no structured data, UTF-8 (with BOM) XML as MSG."""
    header = f"<{PRI}>1 {at_iso} {hostname or '-'} {app} {os.getpid()} {MSGID} - "
    return header.encode("ascii", "replace") + BOM + xml


def frame(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing (also RFC 5425 over TLS)."""
    return str(len(message)).encode() + b" " + message


class Forwarder:
    """Sends the audit trail to the repository, from the cursor on, in a background thread."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.repository = Repository.parse(settings.audit_repository)
        self.hostname = socket.gethostname()
        self.source = Source(ae_title=settings.audit_source_id or settings.ae_title, host=self.hostname,
                             pid=os.getpid(), site_id=settings.audit_enterprise_site_id)
        self._sock: socket.socket | None = None
        self.timeout_seconds = 10.0  # connect, TLS handshake and each send: a repository that stalls is retried
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checkpoints: deque[Checkpoint] = deque(maxlen=PENDING_CHECKPOINTS)
        self.sent = 0

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Queue ``checkpoint`` for the stream (thread-safe); the forwarder's thread sends it."""
        self._checkpoints.append(checkpoint)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dicomnode-atna", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10, *, flush: bool = False) -> None:
        """Stop the thread; with ``flush``, then send what is pending once more (the node's stop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if flush:
            try:
                self.forward_pending()
                self.forward_checkpoints()
            except OSError:  # rows stay in the trail and go out after the next start
                log.warning("audit repository unreachable at stop", extra=extra(stage="audit"))
        self._close()

    def _run(self) -> None:
        delay = self.settings.audit_retry_seconds
        while not self._stop.is_set():
            try:
                progressed = self.forward_pending()
                self.forward_checkpoints()
                delay = self.settings.audit_retry_seconds
                if not progressed:
                    self._stop.wait(self.settings.audit_poll_seconds)
            except OSError as exc:
                self._close()
                log.warning("audit repository unreachable (%s); retrying in %g s", type(exc).__name__, delay,
                            extra=extra(stage="audit"))
                self._stop.wait(delay)
                delay = min(delay * 2, 60.0)
            except Exception:
                log.exception("audit forwarder error", extra=extra(stage="audit"))
                self._stop.wait(self.settings.audit_retry_seconds)

    def forward_pending(self, batch: int = 200) -> bool:
        """Send the next rows after the cursor; True when there were any. Raises OSError when sending fails."""
        with self.sessions() as session:
            cursor = session.get(AuditCursor, CURSOR)
            last = cursor.last_audit_id if cursor else 0
            rows = session.scalars(select(AuditRecord).where(AuditRecord.id > last)
                                   .order_by(AuditRecord.id).limit(batch)).all()
        if not rows:
            return False
        done = last
        try:
            for row in rows:
                xml = audit_message(row, self.source)
                if xml is not None:
                    self._send(syslog_message(xml, event_datetime(row.at), self.hostname))
                    self.sent += 1
                done = row.id
        finally:
            if done != last:
                self._save_cursor(done)
        return True

    def forward_checkpoints(self) -> None:
        """Send the queued checkpoints, oldest first; one that fails stays queued. Raises OSError."""
        while self._checkpoints:
            checkpoint = self._checkpoints[0]
            self._send(syslog_message(checkpoint_message(checkpoint, self.source), checkpoint.at, self.hostname))
            self._checkpoints.popleft()
            self.sent += 1

    def _save_cursor(self, last_id: int) -> None:
        with session_scope(self.sessions) as session:
            cursor = session.get(AuditCursor, CURSOR)
            if cursor is None:
                session.add(AuditCursor(name=CURSOR, last_audit_id=last_id, updated_at=utcnow()))
            else:
                cursor.last_audit_id, cursor.updated_at = last_id, utcnow()

    def _send(self, message: bytes) -> None:
        repo = self.repository
        if repo.scheme == "udp":
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._sock.connect((repo.host, repo.port))
            self._sock.send(message)
            return
        if self._sock is None:
            sock = socket.create_connection((repo.host, repo.port), timeout=self.timeout_seconds)
            if repo.scheme == "tls":
                sock = client_context(self.settings).wrap_socket(sock, server_hostname=repo.host)
            self._sock = sock
        self._sock.sendall(frame(message))

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None



