"""The C-STORE data phase read by the node itself: P-DATA-TF PDUs into a file, then the node's landing.

pynetdicom negotiates, checks and ends every association: AE titles and their audit, the association
limit, the first-PDU, ACSE and network timeouts, TLS, A-RELEASE and A-ABORT. Once an association is
established, each C-STORE on it cost pynetdicom about 5 ms of its own (measured, issue 11): PDU and
PDV objects, a DIMSE message and primitive, two hand-overs between threads, and a response encoded
through pydicom; with one message at a time, that is most of an instance's time.

With ``receive_engine = "native"`` (the default), the DUL thread offers each P-DATA-TF PDU of an
established association to :class:`DataPhase` first (:func:`dicomnode.net.reactor.set_p_data_hook`). It
takes a C-STORE-RQ whose command arrives whole in one PDV, on an accepted presentation context, when
pynetdicom holds no message half-received. It then

1. writes the preamble and the file meta that pynetdicom would write, and each dataset fragment as it
   arrives, into a file in ``spool_dir/.incoming`` (:mod:`dicomnode.receive.incoming`), hashing each
   fragment as it is written (hashlib releases the GIL for it), and parses the header from the first
   64 KiB (:mod:`dicomnode.receive.dataphase.early`);
2. counts the dataset bytes, and aborts the association (audited) once they pass twice
   ``max_instance_mb``, as :class:`~dicomnode.receive.limits.SizeGuard` does;
3. on the last fragment, starts the file's fsync and runs the node's one store path
   (:func:`~dicomnode.receive.handlers.store_received`: checks, durable landing, group commit,
   statuses, audit) on the DUL thread itself, and only then sends the C-STORE-RSP with the status it
   returned.

A request whose SOP class is not its context's is read to its end and answered 0x0122; one whose file
cannot be created or written, 0xA700 (both audited). A command set that does not parse, a C-STORE on a
context never accepted, or P-DATA that breaks the rules while a dataset arrives (a malformed PDV, a
command fragment, another context) aborts the association, and the partial file is removed, as it is
when the connection drops. Everything else stays pynetdicom's, unchanged: C-ECHO, any other DIMSE
message, a command in several fragments.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from dicomnode.log import extra
from dicomnode.receive.dataphase import early
from dicomnode.receive.dataphase.early import EarlyHeader
from dicomnode.receive.handlers import ReceiveContext, Received, refuse_request, refuse_too_large, store_received
from dicomnode.receive.incoming import incoming_dir
from dicomnode.store.ingest import OUT_OF_RESOURCES_DISK, SOP_CLASS_NOT_SUPPORTED
from dicomnode.store.spool import Written

log = logging.getLogger(__name__)

_COMMAND, _LAST = 0x01, 0x02  # PS3.8 E.2 message control header bits
C_STORE_RQ, C_STORE_RSP, NO_DATASET = 0x0001, 0x8001, 0x0101
_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length
_PDV = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_ELEMENT = struct.Struct("<HHL")  # implicit VR little endian: group, element, length


@dataclass
class _Incoming:
    """The C-STORE whose dataset is arriving on one association."""

    context_id: int
    message_id: bytes
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path
    fd: int
    size: int = 0  # dataset bytes
    refused: tuple[int, str] | None = None  # status and reason: the rest is read and dropped, then refused
    written: int = 0  # file bytes
    digest: Any = field(default_factory=hashlib.sha256)  # of the file, fed fragment by fragment
    file_meta: bytes = b""
    prefix: bytearray | None = None  # the dataset's first bytes, until the header is parsed early
    early: EarlyHeader | None = None


_REFUSED = object()  # the association is being aborted: its remaining P-DATA is dropped


class DataPhase:
    """The P-DATA hook of the node's SCP (one per AE, shared by its associations)."""

    def __init__(self, ctx: ReceiveContext) -> None:
        self.ctx = ctx
        self.folder = incoming_dir(ctx.settings)
        self.limit_bytes = int(2 * ctx.settings.max_instance_mb * 2**20)
        # each complete file is fsynced by another thread while the DUL thread checks and records the
        # instance. Fragments are hashed on the DUL thread as they are written: a helper thread that hashed
        # them cost a hand-over per fragment (35 -> 26 context switches an instance on one association),
        # and at four associations about a tenth of the throughput (200 against 179/s, Orthanc 303/s; 5
        # interleaved rounds), while the kernel's socket buffer keeps receiving as the DUL thread hashes.
        self._fsyncs = ThreadPoolExecutor(max_workers=ctx.settings.max_associations, thread_name_prefix="fsync")
        self._incoming: dict[Any, _Incoming | object] = {}  # by association; each touched by its DUL thread
        self._lock = threading.Lock()

    def __call__(self, dul: DULServiceProvider, pdu: bytearray) -> bool:
        try:
            return self._feed(dul, pdu)
        except Exception:  # a defect here: never the peer's fault, never its data in the log
            log.exception("native data phase failed; aborting the association", extra=extra(stage="receive"))
            self._cut_off(dul.assoc)
            return True

    def on_closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE: forget the association; a dataset still arriving on it is closed and removed."""
        with self._lock:
            incoming = self._incoming.pop(event.assoc, None)
        if isinstance(incoming, _Incoming):
            _close_and_remove(incoming)

    def _get(self, assoc: Any) -> _Incoming | object | None:
        with self._lock:
            return self._incoming.get(assoc)

    def _set(self, assoc: Any, incoming: _Incoming | object | None) -> None:
        with self._lock:
            if incoming is None:
                self._incoming.pop(assoc, None)
            else:
                self._incoming[assoc] = incoming

    def _feed(self, dul: DULServiceProvider, pdu: bytearray) -> bool:
        assoc = dul.assoc
        current = self._get(assoc)
        if current is _REFUSED:
            return True
        pdvs = _split(pdu)
        if not isinstance(current, _Incoming):
            if pdvs is None or assoc.dimse.message is not None:
                return False
            context_id, control, start, end = pdvs[0]
            if control & 3 != _COMMAND | _LAST:
                return False
            incoming = self._begin(assoc, context_id, memoryview(pdu)[start:end])
            if incoming is None:
                return False
            if not isinstance(incoming, _Incoming):  # refused
                self._cut_off(assoc)
                return True
            pdvs = pdvs[1:]
        else:
            incoming = current
            if pdvs is None:
                self._cut_off(assoc, incoming)
                return True
        return self._data(dul, incoming, pdu, pdvs)

    def _begin(self, assoc: Any, context_id: int, command: memoryview) -> _Incoming | object | None:
        """The C-STORE-RQ this command starts, with its file open and file meta written; None to leave
        the message to pynetdicom; :data:`_REFUSED` when the association must be aborted (a command that
        is no command set, a C-STORE on a presentation context never accepted: no answer can be given,
        and pynetdicom would leave the dataset's file behind)."""
        fields = _command(command)
        if fields is None:
            log.warning("association aborted: a command set that cannot be parsed", extra=extra(stage="receive"))
            return _REFUSED
        if (_us(fields.get(0x0100)) != C_STORE_RQ or len(fields.get(0x0110, b"")) != 2
                or _us(fields.get(0x0800)) in (None, NO_DATASET)):
            return None
        context = assoc._accepted_cx.get(context_id)
        if context is None:
            log.warning("association aborted: a C-STORE on a presentation context not accepted",
                        extra=extra(stage="receive"))
            return _REFUSED
        if assoc.acceptor.accepted_common_extended or _config.UNRESTRICTED_STORAGE_SERVICE:
            return None
        sop_class, sop_instance = _text(fields.get(0x0002)), _text(fields.get(0x1000))
        transfer_syntax = str(context.transfer_syntax[0])
        incoming = _Incoming(context_id, fields[0x0110], sop_class, sop_instance, transfer_syntax, Path(), -1)
        if sop_class != context.abstract_syntax or uid_to_service_class(sop_class) is not StorageServiceClass:
            incoming.refused = (SOP_CLASS_NOT_SUPPORTED, "the C-STORE request's SOP Class UID is not a storage "
                                                         "SOP class, or not its presentation context's")
        else:
            try:  # a new name, owner-only, never an existing file (as pynetdicom's NamedTemporaryFile)
                incoming.fd, name = tempfile.mkstemp(prefix="native-", suffix=".dcm", dir=self.folder)
                incoming.path = Path(name)
            except OSError as exc:
                incoming.refused = (OUT_OF_RESOURCES_DISK, f"incoming file could not be created: {exc.strerror}")
        self._set(assoc, incoming)
        incoming.file_meta = _file_meta(sop_class, sop_instance, transfer_syntax)
        if not incoming.refused and early.eligible(transfer_syntax):
            incoming.prefix = bytearray()
        self._write(incoming, incoming.file_meta)
        return incoming

    def _data(self, dul: DULServiceProvider, incoming: _Incoming, pdu: bytearray,
              pdvs: list[tuple[int, int, int, int]]) -> bool:
        assoc = dul.assoc
        view = memoryview(pdu)
        for index, (context_id, control, start, end) in enumerate(pdvs):
            if control & _COMMAND or context_id != incoming.context_id:
                self._cut_off(assoc, incoming)  # PS3.8 9.3.5.1: a message's fragments share one context
                return True
            incoming.size += end - start
            if incoming.size > self.limit_bytes:
                self._too_large(assoc, incoming)
                return True
            self._write(incoming, view[start:end])
            if incoming.prefix is not None:
                self._parse_early(incoming, view[start:end], last=bool(control & _LAST))
            if control & _LAST:
                self._set(assoc, None)
                self._answer(dul, incoming)
                rest = pdvs[index + 1:]
                if rest:  # the next message began in the same PDU: pynetdicom's, as any other
                    primitive = P_DATA()
                    # each value with its control header; pynetdicom wants lists, not tuples
                    primitive.presentation_data_value_list = [
                        [cid, bytes(view[s - 1:e])] for cid, _, s, e in rest]  # type: ignore[misc]
                    assoc.dimse.receive_primitive(primitive)
                return True
        return True

    def _parse_early(self, incoming: _Incoming, fragment: memoryview, *, last: bool) -> None:
        """Parse the header once :data:`~dicomnode.receive.dataphase.early.PREFIX_BYTES` of the dataset are in,
        while the rest still arrives; a dataset complete before that is parsed at the end, whole."""
        if last:
            incoming.prefix = None
            return
        assert incoming.prefix is not None
        incoming.prefix += fragment
        if len(incoming.prefix) >= early.PREFIX_BYTES:
            incoming.early = early.parse_prefix(incoming.file_meta, incoming.prefix, incoming.transfer_syntax)
            incoming.prefix = None

    def _write(self, incoming: _Incoming, data: bytes | memoryview) -> None:
        """Append to the incoming file, and queue the bytes for hashing; a failure refuses the instance."""
        if incoming.refused:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(incoming.fd, view):]
        except OSError as exc:
            incoming.refused = (OUT_OF_RESOURCES_DISK, f"incoming file could not be written: {exc.strerror}")
            return
        incoming.written += len(data)
        incoming.digest.update(data)

    def _answer(self, dul: DULServiceProvider, incoming: _Incoming) -> None:
        """Land the complete dataset through the node's store path, then send the C-STORE-RSP."""
        assoc = dul.assoc
        if incoming.refused:
            _close_and_remove(incoming)
            status = refuse_request(assoc, *incoming.refused, self.ctx)
        else:
            synced: Future[None] = self._fsyncs.submit(_fsync, incoming.fd)
            header = whole = None
            if incoming.early is not None:
                header = partial(early.finish, incoming.path, incoming.early, incoming.written)
                whole = partial(early.refusal, incoming.path, incoming.early, incoming.written)
            written = Written(partial(_hexdigest, incoming), synced.result)
            status = store_received(Received(assoc, incoming.path, incoming.transfer_syntax, incoming.sop_class_uid,
                                             incoming.sop_instance_uid, written, header, incoming.written, whole),
                                    self.ctx)
            wait([synced])  # a refusal may not have waited for it: the descriptor closes only after
            _close_and_remove(incoming)  # a landed file was renamed into the spool: nothing to remove
        if assoc.is_aborted or dul.state_machine.current_state != "Sta6":
            return  # aborted meanwhile (by a handler, or the size guard): no answer
        assert dul.socket is not None
        dul.socket.send(_p_data(incoming.context_id, _response(incoming, status), assoc.dimse.maximum_pdu_size))

    def _too_large(self, assoc: Any, incoming: _Incoming) -> None:
        refuse_too_large(assoc, incoming.size, self.ctx)
        self._cut_off(assoc, incoming)

    def _cut_off(self, assoc: Any, incoming: _Incoming | None = None) -> None:
        """Abort the association; drop its remaining P-DATA and the dataset's file."""
        self._set(assoc, _REFUSED)
        if incoming is not None:
            _close_and_remove(incoming)
        assoc.abort(block=False)


def _split(pdu: bytearray) -> list[tuple[int, int, int, int]] | None:
    """The PDVs of a P-DATA-TF PDU as (context ID, control header, start, end of the fragment), or None
    when the PDU is malformed (PS3.8 9.3.5: one or more items, each of at least 2 bytes, filling it)."""
    if len(pdu) < 6 + _PDV.size:
        return None
    _, _, length = _HEADER.unpack_from(pdu)
    pdvs, pos = [], 6
    while pos < 6 + length:
        if pos + _PDV.size > len(pdu):
            return None
        item_length, context_id, control = _PDV.unpack_from(pdu, pos)
        end = pos + 4 + item_length
        if item_length < 2 or end > len(pdu) or context_id % 2 == 0:
            return None
        pdvs.append((context_id, control, pos + _PDV.size, end))
        pos = end
    return pdvs if pos == len(pdu) else None


def _command(data: memoryview) -> dict[int, bytes] | None:
    """Element number -> value of a group 0000 command set (implicit VR little endian); None if it is not one."""
    fields, pos = {}, 0
    while pos < len(data):
        if pos + _ELEMENT.size > len(data):
            return None
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += _ELEMENT.size
        if group != 0 or pos + length > len(data) or element in fields:
            return None
        fields[element] = bytes(data[pos:pos + length])
        pos += length
    return fields


def _us(value: bytes | None) -> int | None:
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def _text(value: bytes | None) -> str:
    """A UID value as sent, without its padding (any bytes: the store path judges it, never this)."""
    return "" if value is None else value.rstrip(b"\0 ").decode("latin-1")


def _file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and file meta (PS3.10 7.1, explicit VR little endian), byte for byte as pynetdicom
    writes them for a received dataset (``create_file_meta``)."""
    def short(number: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", 2, number, vr, len(value)) + value

    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode()
    body = (struct.pack("<HH2sHL", 2, 0x0001, b"OB", 0, 2) + b"\0\1"
            + short(0x0002, b"UI", _padded(sop_class_uid)) + short(0x0003, b"UI", _padded(sop_instance_uid))
            + short(0x0010, b"UI", _padded(transfer_syntax))
            + short(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID))
            + short(0x0013, b"SH", version + b" " * (len(version) % 2)))
    return b"\0" * 128 + b"DICM" + short(0x0000, b"UL", struct.pack("<L", len(body))) + body


def _fsync(fd: int) -> None:
    os.fsync(fd)


def _hexdigest(incoming: _Incoming) -> tuple[str, int]:
    return incoming.digest.hexdigest(), incoming.written


def _close_and_remove(incoming: _Incoming) -> None:
    """Close the file, and remove it unless it was renamed into the spool."""
    if incoming.fd >= 0:
        try:
            os.close(incoming.fd)
        except OSError:
            pass  # a write-back failed: refused either way, and the file goes
        incoming.fd = -1
    if incoming.path.name:
        incoming.path.unlink(missing_ok=True)


def _element(number: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, number, len(value)) + value


def _padded(uid: str) -> bytes:
    value = uid.encode("latin-1")
    return value + b"\0" if len(value) % 2 else value


def _response(incoming: _Incoming, status: int) -> bytes:
    """The C-STORE-RSP command set (PS3.7 9.3.1.2), implicit VR little endian, elements in tag order."""
    body = (_element(0x0002, _padded(incoming.sop_class_uid)) + _element(0x0100, struct.pack("<H", C_STORE_RSP))
            + _element(0x0120, incoming.message_id) + _element(0x0800, struct.pack("<H", NO_DATASET))
            + _element(0x0900, struct.pack("<H", status)) + _element(0x1000, _padded(incoming.sop_instance_uid)))
    return _element(0x0000, struct.pack("<L", len(body))) + body


def _p_data(context_id: int, command: bytes, max_pdu: int) -> bytes:
    """The command as P-DATA-TF PDUs of at most ``max_pdu`` bytes each (0: no limit), one PDV each."""
    step = len(command) if max_pdu == 0 else max(1, max_pdu - _PDV.size)
    pdus = []
    for start in range(0, len(command), step):
        fragment = command[start:start + step]
        control = _COMMAND | (_LAST if start + step >= len(command) else 0)
        pdv = _PDV.pack(len(fragment) + 2, context_id, control) + fragment
        pdus.append(_HEADER.pack(0x04, 0, len(pdv)) + pdv)
    return b"".join(pdus)
