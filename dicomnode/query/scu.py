"""C-FIND (Study Root) as an SCU, bounded: one association, at most ``max_answers`` pending answers
(then C-CANCEL), at most ``timeout`` seconds for the association and each answer, and an overall deadline
checked between answers. It never raises: a refusal, a timeout or an unreachable peer is a
:class:`FindResult` with ``error`` set, which the caller audits and turns into a sentence.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from dicomnode.log import extra
from dicomnode.net import reactor
from dicomnode.net.tls import client_context
from dicomnode.settings import Peer, Settings

log = logging.getLogger(__name__)

FIND = str(StudyRootQueryRetrieveInformationModelFind)
PENDING = (0xFF00, 0xFF01)


@dataclass
class FindResult:
    """The answers of one C-FIND, its final status (None: none came) and, when it failed, why."""

    answers: list[Dataset] = field(default_factory=list)
    status: int | None = None
    error: str = ""
    truncated: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error


def identifier(level: str, **keys: str) -> Dataset:
    """A Study Root query identifier at ``level``: each keyword a matching key (a value) or a return key ("")."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def encoded_query(identifier: Dataset) -> str:
    """The identifier as the peer saw it (Implicit VR Little Endian), base64: the audit's ParticipantObjectQuery."""
    raw = encode(identifier, True, True)
    return base64.b64encode(raw or b"").decode("ascii")


def make_ae(settings: Settings, timeout: float) -> AE:
    reactor.install()
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = min(settings.acse_timeout_seconds, timeout)
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


@contextmanager
def associated(settings: Settings, ae: AE, peer: Peer, **options: Any) -> Iterator[Association]:
    """An association with ``peer`` (released on exit); ``is_established`` says whether it was.
    ``options``: more of :meth:`pynetdicom.AE.associate`'s (``ext_neg``, ``evt_handlers``)."""
    tls_args = (client_context(settings), peer.host) if peer.tls else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, max_pdu=settings.max_pdu_bytes,
                         tls_args=tls_args, **options)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def refusal(assoc: Association, peer: Peer) -> str:
    """Why an association with ``peer`` was not established, in one sentence."""
    if assoc.is_rejected:
        return f"{peer.ae_title} rejected the association"
    return f"{peer.ae_title} did not answer the association request"


def find(settings: Settings, peer: Peer, identifier: Dataset, *, max_answers: int | None = None,
         timeout: float | None = None) -> FindResult:
    """Study Root C-FIND of ``identifier`` at ``peer``; never raises."""
    return find_all(settings, peer, [identifier], max_answers=max_answers, timeout=timeout)[0]


def find_all(settings: Settings, peer: Peer, identifiers: list[Dataset], *, max_answers: int | None = None,
             timeout: float | None = None) -> list[FindResult]:
    """One Study Root C-FIND per identifier, in one association with ``peer``; never raises. After a
    failure the later identifiers are not asked (their results carry the same error)."""
    with Finder(settings, peer, max_answers=max_answers, timeout=timeout) as finder:
        return [finder.find(identifier) for identifier in identifiers]


class Finder:
    """One association with ``peer`` for C-FINDs asked one after another, each as the answers before it
    call for (:meth:`find`); never raises. After a failure every later :meth:`find` carries its error."""

    def __init__(self, settings: Settings, peer: Peer, *, max_answers: int | None = None,
                 timeout: float | None = None) -> None:
        self.settings, self.peer = settings, peer
        self.limit = max_answers or settings.query_max_answers
        self.timeout = timeout or settings.query_timeout_seconds
        self.error = ""
        self.asked = 0
        self._assoc: Association | None = None
        self._started = time.monotonic()

    def __enter__(self) -> Finder:
        ae = make_ae(self.settings, self.timeout)
        ae.add_requested_context(FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        tls_args = (client_context(self.settings), self.peer.host) if self.peer.tls else None
        try:
            self._assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title,
                                       max_pdu=self.settings.max_pdu_bytes, tls_args=tls_args)
            if not self._assoc.is_established:
                self.error = refusal(self._assoc, self.peer)
        except Exception as exc:  # no association: a failed query, never a crash
            self.error = f"C-FIND to {self.peer.ae_title} failed ({type(exc).__name__})"
        return self

    def find(self, identifier: Dataset) -> FindResult:
        result = FindResult()
        if not self.error and self._assoc is not None:
            begun = time.monotonic()
            try:
                _collect(self._assoc, identifier, result, self.limit, begun + self.timeout, self.peer)
            except Exception as exc:  # a peer that breaks the protocol
                result.error = f"C-FIND to {self.peer.ae_title} failed ({type(exc).__name__})"
            result.seconds = time.monotonic() - begun
            self.error = result.error
            self.asked += 1
        result.error = result.error or self.error
        return result

    def __exit__(self, *_exc: object) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        log.info("C-FIND answered", extra=extra(stage="query", peer=self.peer.ae_title, queries=self.asked,
                                                seconds=f"{time.monotonic() - self._started:.3f}",
                                                error=self.error or "-"))


def _collect(assoc: Association, identifier: Dataset, result: FindResult, limit: int, deadline: float,
             peer: Peer) -> None:
    for status, answer in assoc.send_c_find(identifier, FIND):
        if status is None or "Status" not in status:
            # no status: the peer ended the association (Orthanc does so for an AE title it does not know), or
            # the DIMSE timeout ran out
            result.error = (f"{peer.ae_title} did not answer the C-FIND in time" if time.monotonic() >= deadline
                            else f"{peer.ae_title} refused the C-FIND (it ended the association without answering)")
            assoc.abort()
            return
        result.status = int(status.Status)
        if result.status not in PENDING:
            if result.status not in (0x0000, 0xFE00):  # success; cancelled (by us, at the limit)
                result.error = f"{peer.ae_title} refused the C-FIND (status 0x{result.status:04X})"
            return
        if time.monotonic() > deadline:
            result.error = f"{peer.ae_title} took longer than the query timeout"
            assoc.abort()
            return
        if result.truncated:  # answers after our C-CANCEL: the peer goes on; stop listening
            assoc.abort()
            return
        if answer is not None:
            result.answers.append(answer)
        if len(result.answers) >= limit:
            result.truncated = True
            assoc.send_c_cancel(1, query_model=FIND)
