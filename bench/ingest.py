"""Ingest: the same N instances by DCMTK storescu into DCMTK storescp, Orthanc and the node, one run.

Each receiver starts fresh (empty storage) for each run, so every instance is new to it, and after an
``os.sync()``, so that the pages the previous receiver left unwritten (storescp never fsyncs) do not
slow the next one's fsyncs. The runs are interleaved round by round, so that drift on a busy machine
hits every receiver alike; each figure is the median of the rounds. The node runs twice: its SCP in
this process ("dicomnode"), and as deployed, a ``dicomnode receive`` process ("dicomnode receive
(process)"). Printed: instances/s for one and for four concurrent associations, and the
node's ratios against Orthanc and against storescp from the same invocation. DCMTK runs with
TCP_NODELAY=1 (tests/support/peers.py), as it must on loopback.

    python bench/ingest.py [-n 500] [--rounds 3] [--associations 1 4] [--atna-down] [--processes N] [--serve]
                           [--per-association K]

``--per-association K`` opens a new association for every K instances (storescu's default proposal: 128
presentation contexts each), as a sender that opens one per instance does (K = 1).

``--serve`` adds the node as a new user runs it, the README's first command: ``dicomnode serve`` (every
role, the bundled models loaded, the embedded defaults; only the PACS made a known peer) as a process
("dicomnode serve (process)"), beside the ``receive`` role alone.

``--atna-down`` adds a node run whose ATNA forwarder faces a repository that is down (audit transport
never slows ingest). ``--processes N`` adds the node as N receiving processes sharing one port
(``share_port``), one database and one spool.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomnode.audit.syslog import Forwarder
from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.migrate import upgrade
from dicomnode.receive.handlers import ReceiveContext
from dicomnode.receive.scp import start_scp
from dicomnode.settings import Peer, Settings
from tests.support.net import free_port, wait_for
from tests.support.peers import DCMTK_ENV, REPO, NodeProcess, Orthanc, require, storescp

SOURCE = REPO.parent / "shared" / "data" / "ct_single_slice_tcia" / "CT01.dcm"


def _synthetic_ct() -> Dataset:
    """A 512x512 16-bit CT slice (0.5 MB), for machines without ../shared/data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.PatientName, ds.PatientID, ds.Modality = "BENCH^CT", "BENCH-1", "CT"
    ds.StudyDate, ds.SeriesNumber, ds.ImageType = "20260101", 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.random.default_rng(7).integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
    return ds


def make_instances(n: int, folder: Path) -> list[Path]:
    """N slices of one study and series, each with its own SOP Instance UID."""
    folder.mkdir(parents=True)
    base = dcmread(SOURCE) if SOURCE.is_file() else _synthetic_ct()
    base.StudyInstanceUID, base.SeriesInstanceUID = generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        base.InstanceNumber = i + 1
        path = folder / f"CT{i:04d}.dcm"
        base.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


PER_ASSOCIATION = [0]  # --per-association K: each storescu sends K instances, then the next one starts


def send(port: int, called: str, files: list[Path], associations: int) -> float:
    """Seconds for ``associations`` concurrent storescu processes to send ``files`` between them (with
    ``--per-association K``, ``associations`` concurrent lanes of storescu processes, one after the other
    in each lane, each sending K instances in an association of its own)."""
    shares = [files[i::associations] for i in range(associations)]
    each = PER_ASSOCIATION[0] or max(len(share) for share in shares)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=associations) as lanes:
        for failure in lanes.map(lambda share: _lane(port, called, share, each), shares):
            if failure:
                raise SystemExit(f"storescu to {called} failed: {failure}")
    return time.perf_counter() - started


def _lane(port: int, called: str, share: list[Path], each: int) -> str:
    """Send ``share`` in associations of ``each`` instances, one after the other; the first failure, or ""."""
    for start in range(0, len(share), each):
        proc = subprocess.run([require("storescu"), "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port),
                               *map(str, share[start:start + each])], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=600, check=False)
        if proc.returncode != 0:
            return proc.stderr.decode(errors="replace")[-500:]
    return ""


@contextmanager
def dcmtk(root: Path) -> Iterator[tuple[int, str]]:
    with storescp(root) as port:
        yield port, "STORESCP"


@contextmanager
def orthanc(root: Path) -> Iterator[tuple[int, str]]:
    pacs = Orthanc(root, receipts_enabled=False).start()
    try:
        yield pacs.dicom_port, pacs.aet
    finally:
        pacs.stop()


NODE_SETTINGS: dict[str, str] = {}  # --node-set KEY=VALUE: measure one setting against another


def _settings(root: Path, port: int, **more: object) -> Settings:
    return Settings.load(None, data_dir=root, host="127.0.0.1", port=port,
                         peers=[Peer(ae_title="STORESCU", host="127.0.0.1")], min_free_disk_mb=1,
                         audit_retry_seconds=0.2, **NODE_SETTINGS, **more)


def _node(root: Path, audit_repository: str) -> Iterator[tuple[int, str]]:
    settings = _settings(root, free_port(), audit_repository=audit_repository)
    settings.data_dir.mkdir(mode=0o700)
    upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    forwarder = Forwarder(settings, sessions) if audit_repository else None
    servers = start_scp(ReceiveContext(settings, sessions))
    if forwarder:
        forwarder.start()
    try:
        yield settings.port, settings.ae_title
    finally:
        for server in servers:
            server.shutdown()
        if forwarder:
            forwarder.stop()


@contextmanager
def node(root: Path) -> Iterator[tuple[int, str]]:
    yield from _node(root, "")


@contextmanager
def node_atna_down(root: Path) -> Iterator[tuple[int, str]]:
    yield from _node(root, f"tcp://127.0.0.1:{free_port()}")


@contextmanager
def node_process(root: Path) -> Iterator[tuple[int, str]]:
    """The node as deployed: a ``dicomnode receive`` process of its own (its logging, its settings from
    DICOMNODE_* variables; ``--node-set`` applies here too)."""
    env = {"DICOMNODE_PEERS": "STORESCU@127.0.0.1:104", "DICOMNODE_MIN_FREE_DISK_MB": "1",
           **{f"DICOMNODE_{key.upper()}": value for key, value in NODE_SETTINGS.items()}}
    process = NodeProcess(root, env=env, command="receive").start()
    try:
        yield process.port, process.ae_title
    finally:
        process.stop()


@contextmanager
def node_serve(root: Path) -> Iterator[tuple[int, str]]:
    """The README's first command: ``dicomnode serve`` on its embedded defaults (every role, the bundled
    models loaded), the sender made a known peer as the README tells; ``--node-set`` applies too."""
    env = {"DICOMNODE_PEERS": "STORESCU@127.0.0.1:104", "DICOMNODE_MIN_FREE_DISK_MB": "1",
           **{f"DICOMNODE_{key.upper()}": value for key, value in NODE_SETTINGS.items()}}
    process = NodeProcess(root, env=env, command="serve").start()
    try:
        process.wait_started()
        # the worker's warm-up (models, highdicom's tables) done: ingest measured beside an idle worker, as
        # studies arrive at a node that has been up for a while
        wait_for(lambda: "worker warm" in process.log_path.read_text(errors="replace"), timeout=120,
                 msg="worker warm")
        yield process.port, process.ae_title
    finally:
        process.stop()


PROCESSES = [1]  # --processes N


def serve_shared(root: Path, port: int) -> None:
    """One of the receiving processes of :func:`node_processes` (``--serve-shared ROOT PORT``)."""
    settings = _settings(root, port, share_port=True)
    start_scp(ReceiveContext(settings, make_sessionmaker(make_engine(settings.db_url))))
    print("listening", flush=True)
    sys.stdin.read()  # until the bench closes our stdin


@contextmanager
def node_processes(root: Path) -> Iterator[tuple[int, str]]:
    settings = _settings(root, free_port())
    settings.data_dir.mkdir(mode=0o700)
    upgrade(settings.db_url)
    procs = [subprocess.Popen([sys.executable, __file__, "--serve-shared", str(root), str(settings.port),
                               *(f"--node-set={key}={value}" for key, value in NODE_SETTINGS.items())],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(PROCESSES[0])]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == b"listening\n"
        yield settings.port, settings.ae_title
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)


Receiver = Callable[[Path], AbstractContextManager[tuple[int, str]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="instances per run (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each figure is their median (default 3)")
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--atna-down", action="store_true", help="also the node with its ATNA repository down")
    parser.add_argument("--node-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a node setting for this run (e.g. max_pdu_bytes=16382)")
    parser.add_argument("--only", nargs="+", help="receivers to run (default: all)")
    parser.add_argument("--processes", type=int, default=1,
                        help="also the node as this many receiving processes on one port (share_port)")
    parser.add_argument("--serve", action="store_true",
                        help="also the node as the README's first command runs it (dicomnode serve)")
    parser.add_argument("--per-association", type=int, default=0, metavar="K",
                        help="each association carries K instances (a sender that opens one per instance: 1)")
    parser.add_argument("--serve-shared", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    NODE_SETTINGS.update(item.split("=", 1) for item in args.node_set)
    if args.serve_shared:
        serve_shared(Path(args.serve_shared[0]), int(args.serve_shared[1]))
        return
    PROCESSES[0] = args.processes
    PER_ASSOCIATION[0] = args.per_association
    receivers: dict[str, Receiver] = {"DCMTK storescp": dcmtk, "Orthanc": orthanc, "dicomnode": node,
                                      "dicomnode receive (process)": node_process}
    if args.serve:
        receivers["dicomnode serve (process)"] = node_serve
    if args.atna_down:
        receivers["dicomnode, ATNA down"] = node_atna_down
    if args.processes > 1:
        receivers[f"dicomnode, {args.processes} processes"] = node_processes
    if args.only:
        receivers = {k: v for k, v in receivers.items() if k in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_instances(args.n, root / "in")
        size = files[0].stat().st_size
        times: dict[tuple[str, int], list[float]] = {}
        run = 0
        for _ in range(args.rounds):
            for associations in args.associations:
                for name, receiver in receivers.items():
                    run += 1
                    os.sync()  # the previous receiver's unwritten pages must not slow this one's fsyncs
                    with receiver(root / f"run{run}") as (port, called):
                        times.setdefault((name, associations), []).append(send(port, called, files, associations))
    print(f"{args.n} instances of {size // 1024} KiB ({'CT01 clones' if SOURCE.is_file() else 'synthetic CT'}), "
          f"median of {args.rounds} rounds, loopback"
          + (f", {args.per_association} per association" if args.per_association else ""))
    for associations in args.associations:
        rate = {name: args.n / statistics.median(times[(name, associations)]) for name in receivers}
        print(f"\n{associations} association(s)")
        print("| receiver | instances/s |\n|---|---|")
        for name, value in rate.items():
            print(f"| {name} | {value:.0f} |")
        if {"Orthanc", "DCMTK storescp"} <= rate.keys():
            for name in (n for n in rate if n.startswith("dicomnode")):
                print(f"{name} / Orthanc: {rate[name] / rate['Orthanc']:.2f}x; "
                      f"{name} / storescp: {rate[name] / rate['DCMTK storescp']:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
