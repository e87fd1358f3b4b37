"""A DICOM upper-layer client written byte by byte (PS3.8), for the PDUs no toolkit would send.

pynetdicom and DCMTK always fragment messages the same well-formed way; the node's own data phase
(:mod:`dicomnode.receive.dataphase.native`) must also answer commands split over several PDVs, PDUs holding
the end of one message and the start of the next, tiny maximum PDU sizes, and P-DATA that breaks
the rules. This client sends exactly the PDUs a test builds.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

EXPLICIT_LE = "1.2.840.10008.1.2.1"
COMMAND, LAST = 0x01, 0x02
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x02, 0x03, 0x04, 0x05, 0x06, 0x07


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _even(value: bytes, pad: bytes = b"\0") -> bytes:
    return value + pad if len(value) % 2 else value


def associate_rq(sop_class: str, *, calling: str = "PYSCU", called: str = "DICOMNODE", max_pdu: int = 16384,
                 context_id: int = 1, transfer_syntax: str = EXPLICIT_LE,
                 implementation_uid: str | None = "1.2.826.0.1.3680043.10.1234.9") -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing ``sop_class`` with one transfer syntax on ``context_id``;
    without ``implementation_uid``, its user information holds the maximum length alone (minimal)."""
    context = _item(0x20, bytes([context_id, 0, 0, 0]) + _item(0x30, sop_class.encode())
                    + _item(0x40, transfer_syntax.encode()))
    implementation = b"" if implementation_uid is None else _item(0x52, implementation_uid.encode())
    user = _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + implementation)
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + b"\0" * 32
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def element(number: int, value: bytes) -> bytes:
    """A group 0000 element, implicit VR little endian."""
    return struct.pack("<HHI", 0, number, len(value)) + value


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1) announcing a dataset."""
    body = (element(0x0002, _even(sop_class.encode())) + element(0x0100, struct.pack("<H", 0x0001))
            + element(0x0110, struct.pack("<H", message_id)) + element(0x0700, struct.pack("<H", 0))
            + element(0x0800, struct.pack("<H", 0x0000)) + element(0x1000, _even(sop_instance.encode())))
    return element(0x0000, struct.pack("<I", len(body))) + body


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def p_data(pdvs: Iterable[bytes]) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BBI", P_DATA_TF, 0, len(body)) + body


def fragments(context_id: int, data: bytes, size: int, *, command: bool = False) -> list[bytes]:
    """``data`` as PDVs of at most ``size`` bytes each, the last one flagged."""
    kind = COMMAND if command else 0
    chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
    return [pdv(context_id, kind | (LAST if i == len(chunks) - 1 else 0), chunk) for i, chunk in enumerate(chunks)]


class RawAssociation:
    """One association over a plain socket: the test sends PDUs, and reads what the node answers."""

    def __init__(self, port: int, sop_class: str, *, timeout: float = 10, **request: object) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(associate_rq(sop_class, **request))  # type: ignore[arg-type]
        self.largest_pdu = 0  # the longest P-DATA-TF the node sent (its length field)
        self.data_pdus = 0  # how many P-DATA-TF PDUs the node sent
        kind, body = self.read_pdu()
        self.accepted = kind == A_ASSOCIATE_AC and _context_result(body) == 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes]:
        """The next PDU's type and body; (0, b"") once the node closed the connection."""
        header = self._read(6)
        if len(header) < 6:
            return 0, b""
        kind, _, length = struct.unpack(">BBI", header)
        if kind == P_DATA_TF:
            self.largest_pdu = max(self.largest_pdu, length)
            self.data_pdus += 1
        return kind, self._read(length)

    def read_response(self) -> dict[int, bytes] | None:
        """The next command set the node sends, reassembled over PDUs and PDVs; None when the node aborts
        or closes instead."""
        command = b""
        while True:
            kind, body = self.read_pdu()
            if kind != P_DATA_TF:
                return None
            pos = 0
            while pos < len(body):
                length, _, control = struct.unpack(">IBB", body[pos:pos + 6])
                command += body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if control & LAST:
                    return _elements(command)

    def release(self) -> bool:
        """A-RELEASE; whether the node answered A-RELEASE-RP."""
        self.sock.sendall(struct.pack(">BBI", A_RELEASE_RQ, 0, 4) + b"\0" * 4)
        kind, _ = self.read_pdu()
        self.close()
        return kind == A_RELEASE_RP

    def close(self) -> None:
        self.sock.close()

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except (ConnectionResetError, TimeoutError):
                return data
            if not chunk:
                return data
            data += chunk
        return data


def status(command: dict[int, bytes] | None) -> int | None:
    return None if command is None else struct.unpack("<H", command[0x0900])[0]


def _context_result(body: bytes) -> int:
    pos = 68
    while pos < len(body):
        kind, _, length = struct.unpack(">BBH", body[pos:pos + 4])
        if kind == 0x21:
            return body[pos + 6]
        pos += 4 + length
    return -1


def _elements(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 8 <= len(data):
        _, number, length = struct.unpack("<HHI", data[pos:pos + 8])
        out[number] = data[pos + 8:pos + 8 + length]
        pos += 8 + length
    return out


def store(port: int, sop_class: str, sop_instance: str, dataset: bytes, *, transfer_syntax: str = EXPLICIT_LE,
          fragment: int = 16000) -> int | None:
    """One C-STORE of ``dataset`` exactly as given (a lie no toolkit would send: a cut-short value, a body
    in another encoding than ``transfer_syntax``), on an association of its own: the status, or None when
    the node aborted instead."""
    assoc = RawAssociation(port, sop_class, transfer_syntax=transfer_syntax)
    assert assoc.accepted
    try:
        assoc.send(p_data([pdv(1, COMMAND | LAST, c_store_rq(sop_class, sop_instance))])
                   + b"".join(p_data([chunk]) for chunk in fragments(1, dataset, fragment)))
        answered = status(assoc.read_response())
    except BaseException:
        assoc.close()
        raise
    if answered is None:
        assoc.close()
    else:
        assoc.release()
    return answered
