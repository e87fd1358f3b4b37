"""Section 2 of issue 12, measured: can one client stall the node, or blow up its memory?

    python bench/stall.py

Runs the node as a process (no worker), then, one case at a time: a TLS connection that never
handshakes, ten idle TCP connections, a 1 MiB deflated instance inflating to 1 GiB (alone, then four in
parallel), and a 200 MiB plain instance (under the default max_instance_mb, then under 100 MiB). For
each: the known modality's C-STORE time meanwhile, the answer the attacker got, and the node's peak
resident memory (VmHWM) before and after.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
import time
import zlib
from io import BytesIO
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from tests.support.certs import make_ca, make_cert
from tests.support.net import free_port, port_open, wait_for
from tests.support.peers import NodeProcess
from tests.support.synthetic import make_series

MiB = 2**20


def peak_mb(node: NodeProcess) -> float:
    assert node.process is not None
    for line in Path(f"/proc/{node.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def store(port: int, what: Dataset | Path, tls: ssl.SSLContext | None = None,
          syntax: str = ExplicitVRLittleEndian) -> tuple[str, float]:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    started = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", tls_args=(tls, None) if tls else None)
    if not assoc.is_established:
        return "no association", time.perf_counter() - started
    try:
        rsp = assoc.send_c_store(what)
        answer = f"0x{int(rsp.Status):04X}" if "Status" in rsp else "aborted"
    finally:
        if assoc.is_established:
            assoc.release()
    return answer, time.perf_counter() - started


def big_file(folder: Path, pixel_bytes: int, deflated: bool) -> Path:
    """A Part-10 file whose Pixel Data is ``pixel_bytes`` of zeros, deflated while written when asked."""
    ds = make_series(n_slices=1, rows=8, columns=8)[0]
    del ds.PixelData
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1024, 1024, pixel_bytes // (2 * MiB)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    head = BytesIO()
    dcmwrite(head, Dataset(ds), implicit_vr=False, little_endian=True)
    element = b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
    meta = BytesIO()
    write_file_meta_info(meta, ds.file_meta)
    path = folder / ("bomb.dcm" if deflated else "big.dcm")
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS) if deflated else None
        chunks = [head.getvalue(), element] + [bytes(16 * MiB)] * (pixel_bytes // (16 * MiB))
        for chunk in chunks:
            out.write(packer.compress(chunk) if packer else chunk)
        if packer:
            out.write(packer.flush())
    return path


def known_store_during(port: int, attack: threading.Thread, tls: ssl.SSLContext | None = None) -> str:
    attack.start()
    times = [store(port, make_series(n_slices=1, rows=8, columns=8)[0], tls) for _ in range(3)]
    return ", ".join(f"{a} in {t:.2f} s" for a, t in times)


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="dicomnode-stall-"))
    ca = make_ca(folder, "ca")
    node_pair, pacs_pair = make_cert(ca, folder, "node"), make_cert(ca, folder, "pacs")
    (folder / "models").mkdir()
    tls_port = free_port()
    node = NodeProcess(folder / "node", env={
        "DICOMNODE_PEERS": "PYSCU@127.0.0.1:104", "DICOMNODE_START_WORKER": "false",
        "DICOMNODE_MODELS_DIR": str(folder / "models"), "DICOMNODE_MIN_FREE_DISK_MB": "1",
        "DICOMNODE_TLS_PORT": str(tls_port), "DICOMNODE_TLS_CERT_FILE": str(node_pair.cert),
        "DICOMNODE_TLS_KEY_FILE": str(node_pair.key), "DICOMNODE_TLS_CA_FILE": str(ca.cert)}).start()
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.cert))
    client.check_hostname = False
    client.load_cert_chain(pacs_pair.cert, pacs_pair.key)
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # send the big files as they are, from disk
    try:
        wait_for(lambda: port_open(tls_port), timeout=30, msg="TLS port listening")
        print(f"node peak memory at start: {peak_mb(node):.0f} MB")
        silent = socket.create_connection(("127.0.0.1", tls_port))
        idle = threading.Thread(target=lambda: None)
        print("1 silent TLS connection; known modality over TLS:", known_store_during(tls_port, idle, client))
        silent.close()
        socks = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(10)]
        print("10 idle TCP connections; known modality:", known_store_during(node.port, threading.Thread(
            target=lambda: None)))
        for sock in socks:
            sock.close()
        big = big_file(folder, 200 * MiB, deflated=False)
        before = peak_mb(node)
        answer, seconds = store(node.port, big)
        print(f"200 MiB plain instance (max_instance_mb=1024): {answer} in {seconds:.1f} s; "
              f"peak memory {before:.0f} -> {peak_mb(node):.0f} MB")
        bomb = big_file(folder, 1024 * MiB, deflated=True)
        print(f"deflate bomb: {bomb.stat().st_size / MiB:.1f} MiB inflating to 1024 MiB")
        for parallel in (1, 4):
            answers: list[str] = []
            before = peak_mb(node)
            attackers = [threading.Thread(target=lambda out=answers: out.append(
                store(node.port, bomb, syntax=DeflatedExplicitVRLittleEndian)[0])) for _ in range(parallel)]
            for attacker in attackers[1:]:
                attacker.start()
            during = known_store_during(node.port, attackers[0])
            for attacker in attackers:
                attacker.join()
            print(f"  {parallel} in parallel: answers {answers}; known modality {during}; "
                  f"peak memory {before:.0f} -> {peak_mb(node):.0f} MB")
    finally:
        node.stop()
    small = NodeProcess(folder / "node100", env={
        "DICOMNODE_PEERS": "PYSCU@127.0.0.1:104", "DICOMNODE_START_WORKER": "false",
        "DICOMNODE_MODELS_DIR": str(folder / "models"), "DICOMNODE_MIN_FREE_DISK_MB": "1",
        "DICOMNODE_MAX_INSTANCE_MB": "100"}).start()
    try:
        before = peak_mb(small)
        answer, seconds = store(small.port, big)
        print(f"200 MiB plain instance (max_instance_mb=100): {answer} in {seconds:.1f} s; "
              f"peak memory {before:.0f} -> {peak_mb(small):.0f} MB")
    finally:
        small.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
