"""Ingest: DCMTK storescu -> storescp (reference) vs -> the node's SCP, same files, same run.

A third run repeats the node's with the ATNA forwarder running against a repository that is down,
to show that audit transport never slows ingest.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from dicomnode.audit.syslog import Forwarder
from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.migrate import upgrade
from dicomnode.receive.handlers import ReceiveContext
from dicomnode.receive.scp import start_scp
from dicomnode.settings import Peer, Settings
from tests.support.net import free_port
from tests.support.peers import REPO, storescp, storescu

ROUNDS = 3
SOURCE = REPO.parent / "shared" / "data" / "ct_single_slice_tcia" / "CT01.dcm"


def clone(n: int, folder: Path) -> list[Path]:
    base = dcmread(SOURCE)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        base.StudyInstanceUID, base.SeriesInstanceUID = study, series
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        base.InstanceNumber = i + 1
        path = folder / f"CT{i:04d}.dcm"
        base.save_as(path)
        paths.append(path)
    return paths


def timed_store(port: int, folder: Path, called: str) -> float:
    started = time.perf_counter()
    result = storescu(port, folder, called=called)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"storescu to {called} failed: {result.stderr[-500:]}")
    return elapsed


def node_run(root: Path, name: str, n: int, audit_repository: str = "") -> float:
    clone(n, root / name)  # new UIDs: every instance is new to the node
    settings = Settings.load(None, data_dir=root / f"node-{name}", host="127.0.0.1", port=free_port(),
                             peers=[Peer(ae_title="STORESCU", host="127.0.0.1")], min_free_disk_mb=1,
                             audit_repository=audit_repository, audit_retry_seconds=0.2)
    settings.data_dir.mkdir()
    upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    forwarder = Forwarder(settings, sessions) if audit_repository else None
    servers = start_scp(ReceiveContext(settings, sessions))
    if forwarder:
        forwarder.start()
    try:
        return timed_store(settings.port, root / name, "DICOMNODE")
    finally:
        for server in servers:
            server.shutdown()
        if forwarder:
            forwarder.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        clone(n, root / "in")
        with storescp(root / "ref") as ref_port:
            reference = timed_store(ref_port, root / "in", "STORESCP")
        plain, downs = [], []
        for round_ in range(ROUNDS):  # alternate, so that drift on a busy machine hits both alike
            (root / f"plain{round_}").mkdir()
            plain.append(node_run(root, f"plain{round_}", n))
            (root / f"atna{round_}").mkdir()
            downs.append(node_run(root, f"atna{round_}", n, audit_repository=f"tcp://127.0.0.1:{free_port()}"))
        node, down = statistics.median(plain), statistics.median(downs)
    print(f"{n} instances of {SOURCE.stat().st_size // 1024} KiB")
    print(f"DCMTK storescp               : {reference:6.2f} s  {n / reference:7.1f} instances/s")
    print(f"dicomnode SCP                : {node:6.2f} s  {n / node:7.1f} instances/s (median of {ROUNDS}; "
          "fsync + DB + audit row each)")
    print(f"dicomnode SCP, ATNA repo down: {down:6.2f} s  {n / down:7.1f} instances/s (median of {ROUNDS})")
    print(f"ratio node/storescp time: {node / reference:.2f}; repository down/plain: {down / node:.2f}")


if __name__ == "__main__":
    main()
