"""Edge-cloud latency: deepbet run locally against deepbet on a cloud dicomnode reached by DICOMweb.

    python bench/edge_cloud.py [--runs 2] [--delay-ms 0 25]

The cloud is a real ``dicomnode serve`` process (deepbet, a ``sender`` user); the edge side runs in this
process through the same code as the edge node's worker (:func:`dicomnode.remote.roundtrip.run_remote`).
Remote time is split into de-identify, upload, queue (the cloud's completion sweep, job queue, volume
and SEG/SR building: everything but the model), model (the cloud's inference, from its results summary),
download and re-identify; for the local run, "queue" is the volume and SEG/SR building. ``--delay-ms`` adds a
one-way delay (each direction) in a small TCP relay between edge and cloud, so that a WAN round trip can
be reproduced on one machine without kernel settings. Each remote run sends the series under new UIDs, so
that the cloud never deduplicates it.
"""

from __future__ import annotations

import argparse
import copy
import json
import queue
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnode.admin.auth import hash_password
from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.inference.registry import Registry
from dicomnode.jobs.repository import ClaimedJob, claim
from dicomnode.migrate import upgrade
from dicomnode.pipeline import PipelineContext, build_input, build_results, infer
from dicomnode.remote.backend import RemoteBackend
from dicomnode.remote.roundtrip import Timings, run_remote
from dicomnode.settings import Settings
from tests.support.net import free_port, port_open, wait_for
from tests.support.peers import REPO, NodeProcess
from tests.support.spooled import queue_job, spool

SERIES = REPO.parent / "shared" / "data" / "mr_t1_brain_mni152"
STAGES = ("deidentify", "upload", "queue", "model", "download", "reidentify")


class Relay:
    """A TCP relay to ``127.0.0.1:target`` that holds every chunk ``delay`` seconds in each direction."""

    def __init__(self, target: int, delay: float) -> None:
        self.target, self.delay = target, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for src, dst in ((client, upstream), (upstream, client)):
                self._pipe(src, dst)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        chunks: queue.Queue[tuple[float, bytes] | None] = queue.Queue()

        def read() -> None:
            try:
                while data := src.recv(65536):
                    chunks.put((time.monotonic() + self.delay, data))
            except OSError:
                pass
            chunks.put(None)

        def write() -> None:
            try:
                while (item := chunks.get()) is not None:
                    due, data = item
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def start_cloud(folder: Path, password: str) -> tuple[NodeProcess, int]:
    admin_port = free_port()
    users = [{"name": "edge", "password_hash": hash_password(password, 1000), "role": "sender"}]
    rules = [{"name": "cloud", "model": "deepbet", "match": {"Modality": "^MR$"}}]
    node = NodeProcess(folder, ae_title="CLOUD", env={
        "DICOMNODE_ADMIN_PORT": str(admin_port), "DICOMNODE_ADMIN_USERS": json.dumps(users),
        "DICOMNODE_RULES": json.dumps(rules), "DICOMNODE_STUDY_IDLE_SECONDS": "0.5",
        "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.2", "DICOMNODE_WORKER_POLL_SECONDS": "0.1",
        "DICOMNODE_MIN_FREE_DISK_MB": "1", "DICOMNODE_ADMIN_MAX_CONNECTIONS": "16",
    }).start()
    wait_for(lambda: port_open(admin_port), timeout=120, msg="cloud admin port")
    return node, admin_port


def fresh_uids(series: list[Dataset]) -> list[Dataset]:
    """The series under new study, series, frame of reference and instance UIDs."""
    study, uid, frame = generate_uid(), generate_uid(), generate_uid()
    copies = []
    for ds in series:
        clone = copy.deepcopy(ds)
        clone.StudyInstanceUID, clone.SeriesInstanceUID, clone.FrameOfReferenceUID = study, uid, frame
        clone.SOPInstanceUID = generate_uid()
        clone.file_meta.MediaStorageSOPInstanceUID = clone.SOPInstanceUID
        copies.append(clone)
    return copies


def cloud_model_seconds(cloud: NodeProcess) -> float:
    """The inference seconds of the cloud's newest result."""
    newest = max((cloud.data_dir / "results").glob("job-*/results.json"), key=lambda p: p.stat().st_mtime)
    return float(json.loads(newest.read_text())["inference_seconds"])


def local_runs(series: list[Dataset], registry: Registry, ctx: PipelineContext, runs: int) -> list[dict[str, float]]:
    """Volume, warm model and SEG/SR building, as the edge's own worker does them."""
    manifest = registry.manifests["deepbet"]
    registry.get("deepbet")  # warm, as the node keeps it
    job = ClaimedJob(id=0, series_id=0, series_uid=str(series[0].SeriesInstanceUID), series_number=1,
                     study_uid=str(series[0].StudyInstanceUID), patient_id=None, patient_name=None,
                     model_id=manifest.id, model_version=manifest.version, revision=1, attempts=0)
    rows = []
    for _ in range(runs):
        started = time.perf_counter()
        image = build_input(manifest, series)
        inferred, seconds = infer(ctx, manifest, image)
        build_results(manifest, image, inferred, job)
        total = time.perf_counter() - started
        rows.append({"model": seconds, "queue": total - seconds, "total": total})
    return rows


def remote_runs(series: list[Dataset], settings: Settings, ctx: PipelineContext, backend: RemoteBackend,
                cloud: NodeProcess, runs: int) -> list[dict[str, float]]:
    rows = []
    for _ in range(runs):
        copies = fresh_uids(series)
        spool(settings, ctx.sessions, copies)
        queue_job(ctx.sessions, str(copies[0].SeriesInstanceUID), "deepbet", ctx.registry.manifests["deepbet"].version)
        job = claim(ctx.sessions, "bench", 3600)
        assert job is not None
        timings = Timings()
        started = time.perf_counter()
        run_remote(settings, ctx.sessions, job, backend, copies, timings)
        total = time.perf_counter() - started
        model = cloud_model_seconds(cloud)
        row = {**timings.seconds, "model": model, "queue": timings.seconds["wait"] - model, "total": total}
        rows.append(row)
    return rows


def _print(label: str, rows: list[dict[str, float]]) -> None:
    cells = [f"{statistics.median(r.get(s, 0.0) for r in rows):7.2f}" for s in (*STAGES, "total")]
    print(f"| {label:<22} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--delay-ms", type=float, nargs="*", default=[0.0, 25.0])
    args = parser.parse_args()
    series: list[Dataset] = [dcmread(p) for p in sorted(SERIES.iterdir())]
    folder = Path(tempfile.mkdtemp(prefix="dicomnode-bench-"))
    password = "bench-password"
    (folder / "cloud.password").write_text(password)
    cloud, admin_port = start_cloud(folder / "cloud", password)
    try:
        settings = Settings.load(None, data_dir=folder / "edge", min_free_disk_mb=1)
        settings.data_dir.mkdir(parents=True)
        upgrade(settings.db_url)
        registry = Registry(REPO / "models", "auto")
        ctx = PipelineContext(settings=settings, sessions=make_sessionmaker(make_engine(settings.db_url)),
                              registry=registry)
        print(f"series {SERIES.name}: {len(series)} instances; seconds, median of {args.runs} runs")
        print("| placement              | " + " | ".join(f"{s:>7}" for s in (*STAGES, "total")) + " |")
        print("|" + "---|" * (len(STAGES) + 2))
        _print("local", local_runs(series, registry, ctx, args.runs))
        for delay in args.delay_ms:
            relay = Relay(admin_port, delay / 1000)
            backend = RemoteBackend(url=f"http://127.0.0.1:{relay.port}", user="edge",
                                    password_file=folder / "cloud.password", placement="remote", poll_seconds=0.2)
            try:
                _print(f"remote, +{delay:g} ms one-way", remote_runs(series, settings, ctx, backend, cloud, args.runs))
            finally:
                relay.close()
    finally:
        cloud.stop()


if __name__ == "__main__":
    main()
