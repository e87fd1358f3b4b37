"""What a C-STORE data path of the node's own, without pynetdicom per message, would reach: a probe.

Not the node. ``--serve`` runs a minimal receiver written for this measurement only: it answers an
A-ASSOCIATE-RQ (Explicit, else Implicit VR Little Endian; no checks of AE titles, roles or limits),
then reads P-DATA-TF PDUs itself, writes each dataset's fragments straight into a file, and lands the
instance with the node's own durable steps: file SHA-256 and fsync, header parse (pydicom,
``defer_size`` as the node), rename into ``spool/<study>/<series>/``, folder fsync, and one SQLite
transaction (WAL, ``synchronous=FULL``) with a lookup and an insert, before its C-STORE-RSP goes out.
Orthanc and the node's real SCP receive the same instances in the same invocation:

    PYTHONPATH=. python bench/data_path.py [-n 300] [--rounds 2] [--associations 1 4]

It answers one question for issue 11: how much of the gap to Orthanc is pynetdicom's per-message
work, and how much the durable landing. Its answer led to the node's own data phase
(``dicomnode/receive/dataphase/native.py``, ``receive_engine = "native"``), which has every check the probe lacks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread

from bench.ingest import make_instances, node, orthanc, send
from tests.support.net import free_port, port_open, wait_for

EXPLICIT, IMPLICIT = b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2"
MAX_PDU = 131072


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _even(value: bytes) -> bytes:
    return value + b"\0" if len(value) % 2 else value


def _recv(sock: socket.socket, n: int) -> bytearray:
    buffer = bytearray(n)
    view, got = memoryview(buffer), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionError("peer closed")
        got += k
    return buffer


def _accept(request: bytes) -> bytes:
    """The A-ASSOCIATE-AC for ``request`` (PS3.8 9.3.2-9.3.3): variable items from byte 74."""
    pos, items = 74, b""
    while pos < len(request):
        kind, _, length = struct.unpack(">BBH", request[pos:pos + 4])
        body = request[pos + 4:pos + 4 + length]
        pos += 4 + length
        if kind == 0x10:  # application context
            items += _item(0x10, body)
        elif kind == 0x20:  # presentation context: ID, 3 reserved, then sub-items
            offered, sub = [], 4
            while sub < len(body):
                sub_kind, _, sub_length = struct.unpack(">BBH", body[sub:sub + 4])
                if sub_kind == 0x40:
                    offered.append(body[sub + 4:sub + 4 + sub_length].rstrip(b"\0"))
                sub += 4 + sub_length
            chosen = EXPLICIT if EXPLICIT in offered else IMPLICIT if IMPLICIT in offered else None
            items += _item(0x21, bytes([body[0], 0, 0 if chosen else 4, 0]) + _item(0x40, chosen or IMPLICIT))
    items += _item(0x50, _item(0x51, struct.pack(">I", MAX_PDU)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433.9"))
    body = struct.pack(">HH", 1, 0) + request[10:26] + request[26:42] + b"\0" * 32 + items
    return struct.pack(">BBI", 2, 0, len(body)) + body


def _command(data: bytes) -> dict[int, bytes]:
    """Group 0000 elements, Implicit VR Little Endian: element number -> value."""
    out, pos = {}, 0
    while pos < len(data):
        _, element, length = struct.unpack("<HHI", data[pos:pos + 8])
        out[element] = data[pos + 8:pos + 8 + length]
        pos += 8 + length
    return out


def _response(command: dict[int, bytes], field: int, status: int) -> bytes:
    def element(number: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, number, len(value)) + value

    body = (element(0x0002, _even(command[0x0002].rstrip(b"\0"))) + element(0x0100, struct.pack("<H", field))
            + element(0x0120, command[0x0110]) + element(0x0800, struct.pack("<H", 0x0101))
            + element(0x0900, struct.pack("<H", status)))
    if 0x1000 in command:
        body += element(0x1000, _even(command[0x1000].rstrip(b"\0")))
    return element(0x0000, struct.pack("<I", len(body))) + body


def _p_data(context_id: int, payload: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, 0x03) + payload
    return struct.pack(">BBI", 4, 0, len(pdv)) + pdv


class Probe:
    """The probe receiver: one thread per association, one SQLite connection under a lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for folder in ("spool", "incoming"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(root / "probe.db", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS instance (uid TEXT PRIMARY KEY, series TEXT, study TEXT, "
                        "path TEXT, sha256 TEXT)")

    def land(self, received: Path) -> None:
        with open(received, "rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
            os.fsync(file.fileno())
        ds = dcmread(received, defer_size=2**20, force=True)
        study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        folder = self.root / "spool" / study / series
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(received, folder / f"{sop}.dcm")
        fd = os.open(folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("SELECT uid FROM instance WHERE uid = ?", (sop,)).fetchone()
            self.db.execute("INSERT OR REPLACE INTO instance VALUES (?, ?, ?, ?, ?)",
                            (sop, series, study, str(folder / f"{sop}.dcm"), digest))
            self.db.execute("COMMIT")

    def association(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock:
            header = _recv(sock, 6)
            sock.sendall(_accept(bytes(header + _recv(sock, struct.unpack(">I", header[2:6])[0]))))
            pending, command, out, path, count = bytearray(), {}, -1, Path(), 0
            while True:
                header = _recv(sock, 6)
                kind, length = header[0], struct.unpack(">I", header[2:6])[0]
                body = memoryview(_recv(sock, length))
                if kind != 4:  # A-RELEASE-RQ: A-RELEASE-RP; anything else ends it
                    if kind == 5:
                        sock.sendall(struct.pack(">BBI", 6, 0, 4) + b"\0" * 4)
                    return
                pos = 0
                while pos < length:
                    item_length, context_id, control = struct.unpack(">IBB", body[pos:pos + 6])
                    fragment = body[pos + 6:pos + 4 + item_length]
                    pos += 4 + item_length
                    if control & 0x01:  # command fragment
                        pending += fragment
                        if control & 0x02:
                            command, pending = _command(bytes(pending)), bytearray()
                            if struct.unpack("<H", command[0x0100])[0] == 0x0030:  # C-ECHO-RQ
                                sock.sendall(_p_data(context_id, _response(command, 0x8030, 0)))
                                continue
                            count += 1
                            path = self.root / "incoming" / f"{threading.get_ident()}-{count}"
                            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    else:
                        os.write(out, fragment)
                        if control & 0x02:
                            os.close(out)
                            self.land(path)
                            sock.sendall(_p_data(context_id, _response(command, 0x8001, 0x0000)))


def serve(root: Path, port: int) -> None:
    probe = Probe(root)
    with socket.create_server(("127.0.0.1", port)) as listener:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=probe.association, args=(client,), daemon=True).start()


@contextmanager
def data_path(root: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(root), str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: proc.poll() is None and port_open(port), timeout=30, msg="probe listening")
        yield port, "PROBE"
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--serve", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]))
        return
    receivers = {"Orthanc": orthanc, "dicomnode (pynetdicom)": node, "own data path (probe)": data_path}
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = make_instances(args.n, Path(tmp) / "in")
        run = 0
        for _ in range(args.rounds):
            for associations in args.associations:
                for name, receiver in receivers.items():
                    run += 1
                    with receiver(Path(tmp) / f"run{run}") as (port, called):
                        elapsed = send(port, called, files, associations)
                    if receiver is data_path:  # every acknowledged instance must be there
                        with sqlite3.connect(Path(tmp) / f"run{run}" / "probe.db") as db:
                            assert db.execute("SELECT count(*) FROM instance").fetchone()[0] == args.n
                    rates.setdefault((name, associations), []).append(args.n / elapsed)
    print(f"{args.n} instances, median of {args.rounds} rounds, loopback")
    for associations in args.associations:
        orthanc_rate = statistics.median(rates[("Orthanc", associations)])
        print(f"\n{associations} association(s)\n| receiver | instances/s | vs Orthanc |\n|---|---|---|")
        for name in receivers:
            rate = statistics.median(rates[(name, associations)])
            print(f"| {name} | {rate:.0f} | {rate / orthanc_rate:.2f}x |")


if __name__ == "__main__":
    main()
