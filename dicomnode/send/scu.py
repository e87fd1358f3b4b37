"""C-STORE SCU: send result files to a destination and check every response status.

An instance counts as stored only when the destination answered success (0x0000) or a warning
(0xB000-0xBFFF, PS3.4 B.2.3). Anything else, or no answer, is a failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.errors import SendError
from dicomnode.log import extra
from dicomnode.net import reactor
from dicomnode.net.tls import client_context
from dicomnode.settings import Peer, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreOutcome:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    status: int | None

    @property
    def stored(self) -> bool:
        return self.status is not None and (self.status == 0x0000 or 0xB000 <= self.status <= 0xBFFF)


def _ae(settings: Settings) -> AE:
    reactor.install()
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = settings.dimse_timeout_seconds
    ae.network_timeout = settings.network_timeout_seconds
    return ae


def _associate(settings: Settings, ae: AE, peer: Peer, handlers: list[Any] | None = None) -> Association:
    tls_args = (client_context(settings), peer.host) if peer.tls else None
    return ae.associate(peer.host, peer.port, ae_title=peer.ae_title, max_pdu=settings.max_pdu_bytes,
                        tls_args=tls_args, evt_handlers=handlers)


NEGOTIATION_TRIES = 10  # quick tries: only a peer that answers fast (rejects or resets) is asked again


def _rejection(assoc: Association) -> int | None:
    """The A-ASSOCIATE-RJ result (1 rejected-permanent, 2 rejected-transient), None when there was none."""
    primitive = assoc.acceptor.primitive
    if not assoc.is_rejected or primitive is None or primitive.result is None:
        return None
    return int(primitive.result)


def _establish(settings: Settings, ae: AE, peer: Peer) -> Association:
    """An established association with ``peer``, or the :class:`SendError` its answer calls for.

    The decision rests on the peer's answer alone (PS3.8 7.1.1.7): an A-ASSOCIATE-RJ with result
    rejected-permanent is permanent, rejected-transient is retryable. When the peer ended the
    negotiation without an answer we could read (it closed or reset the connection, and the reset can
    overtake a rejection already sent), the request is made again, up to ``NEGOTIATION_TRIES`` times,
    so that a rejection is read as one however the threads are scheduled; no answer at all (nobody
    listening, a timeout, only aborts) is retryable.
    """
    for _ in range(NEGOTIATION_TRIES):
        started = time.monotonic()
        assoc = _associate(settings, ae, peer)
        if assoc.is_established:
            return assoc
        result = _rejection(assoc)
        if result is not None:
            raise SendError(f"association with {peer} rejected "
                            f"({'permanent' if result == 1 else 'transient'})", retryable=result != 1)
        if time.monotonic() - started >= settings.acse_timeout_seconds / 2:
            break  # no answer in time: asking again now won't help
    raise SendError(f"association with {peer} not established", retryable=True)


def send_files(settings: Settings, peer: Peer, paths: Sequence[Path]) -> list[StoreOutcome]:
    """C-STORE each file in one association; return one outcome per file.

    Raises
    ------
    SendError
        When no association could be established (``retryable`` unless the peer rejected it).
    """
    datasets = [dcmread(p) for p in paths]
    ae = _ae(settings)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = _establish(settings, ae, peer)
    outcomes = []
    try:
        for path, ds in zip(paths, datasets, strict=True):
            status = None
            if assoc.is_established:
                rsp = assoc.send_c_store(ds)
                status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
            outcomes.append(StoreOutcome(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), status))
            log.info("C-STORE answered", extra=extra(stage="send", destination=peer.ae_title,
                                                     status=f"0x{status:04X}" if status is not None else "none"))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


@dataclass(frozen=True)
class Echoed:
    """A C-ECHO's outcome: the peer's status, or (``status`` None) why it gave none, in the words an
    operator acts on (as DCMTK's echoscu says them)."""

    status: int | None
    why: str = ""
    associated: bool = False  # the association was made, and the C-ECHO got no status

    def __str__(self) -> str:
        if self.status is not None:
            return f"0x{self.status:04X}"
        return self.why if self.associated else f"no association: {self.why}"


def echo(settings: Settings, peer: Peer) -> Echoed:
    """C-ECHO ``peer`` (PS3.7 9.3.5): its status; else whether nothing took the connection, the peer
    rejected the association (result, source and reason of its A-ASSOCIATE-RJ, PS3.8 9.3.4), or it
    answered neither."""
    ae = _ae(settings)
    ae.add_requested_context(Verification)
    connected = threading.Event()
    assoc = _associate(settings, ae, peer, [(evt.EVT_CONN_OPEN, lambda _event: connected.set())])
    if not assoc.is_established:
        primitive = assoc.acceptor.primitive
        if assoc.is_rejected and primitive is not None and primitive.result is not None:
            why = f"{primitive.result_str} by the {primitive.source_str}: {primitive.reason_str}"
        elif not connected.is_set():
            why = (f"no TLS connection to {peer.host}:{peer.port} (nothing listening, or a failed handshake: "
                   "a certificate not trusted, or not accepted)" if peer.tls
                   else f"no connection to {peer.host}:{peer.port}")
        else:
            why = ("no answer to the association request (closed, aborted, or none within "
                   f"acse_timeout_seconds={settings.acse_timeout_seconds:g})")
        return Echoed(None, why)
    try:
        rsp = assoc.send_c_echo()
        if "Status" not in rsp:
            return Echoed(None, "no answer to the C-ECHO request", associated=True)
        return Echoed(int(rsp.Status))
    finally:
        assoc.release()
