"""Memory: the receiver's RSS while it takes a 2 GB study, and a worker's peak RSS on a large CT.

1. ``dicomnode receive`` runs as its own process; DCMTK storescu sends it N CT slices of 0.5 MB (4,000:
   2 GB) on one association. /proc/<pid>/status is sampled every 50 ms: RSS before (after a C-ECHO),
   the peak while receiving, and the growth (the goal: < 300 MB).
2. ``--big MB``: one plain (Explicit VR Little Endian) instance of about MB MiB on its own
   association, to a receiver with ``max_instance_mb`` above it: its peak RSS against its RSS before,
   and the growth as a multiple of the instance's size.
3. ``--inference``: in a child process, one job of the test-only threshold model (ONNX, through the
   node's real pipeline: load, volume, model, SEG and SR build, write) on a synthetic CT of
   512x512x400; its peak RSS (``ru_maxrss``) against its RSS before the job.

    PYTHONPATH=. python bench/memory.py [-n 4000] [--big 200] [--inference] [--slices 400]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydicom.uid import CTImageStorage

from bench.ingest import make_instances
from tests.support.peers import DCMTK_ENV, NodeProcess, echoscu, require


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _send_sampled(root: Path, files: list[Path], env: dict[str, str]) -> tuple[float, float, float]:
    """Send ``files`` on one association to a fresh ``dicomnode receive``; its RSS before, peak, and seconds."""
    node = NodeProcess(root / "node", env={"DICOMNODE_PEERS": "STORESCU@127.0.0.1:104",
                                           "DICOMNODE_MIN_FREE_DISK_MB": "1", **env}, command="receive").start()
    try:
        assert node.process is not None
        pid = node.process.pid
        assert echoscu(node.port, called="DICOMNODE", calling="STORESCU").returncode == 0
        before = rss_mb(pid)
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak.append(rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        result = subprocess.run([require("storescu"), "-aet", "STORESCU", "-aec", "DICOMNODE", "127.0.0.1",
                                 str(node.port), *map(str, files)], env=DCMTK_ENV, capture_output=True,
                                timeout=3600, check=False)
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        assert result.returncode == 0, result.stderr[-500:]
        return before, max(peak), elapsed
    finally:
        node.stop()


def receive(n: int, root: Path) -> None:
    files = make_instances(n, root / "in")
    size_gb = sum(p.stat().st_size for p in files) / 1e9
    before, peak, elapsed = _send_sampled(root, files, {})
    print(f"receive: {n} instances, {size_gb:.2f} GB in {elapsed:.0f} s ({n / elapsed:.0f}/s), one association")
    print("| RSS before (MB) | peak RSS (MB) | growth (MB) | goal |\n|---|---|---|---|")
    print(f"| {before:.0f} | {peak:.0f} | {peak - before:.0f} | < 300 |")


def big_instance(size_mb: int, root: Path) -> None:
    """One plain instance of about ``size_mb`` MiB (16-bit pixels of a square image)."""
    from tests.support.synthetic import make_series

    side = int((size_mb * 2**20 / 2) ** 0.5)
    (ds,) = make_series(n_slices=1, rows=side, columns=side)
    path = root / "big" / "big.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    del ds
    size = path.stat().st_size / 2**20
    before, peak, elapsed = _send_sampled(root / "big", [path], {"DICOMNODE_MAX_INSTANCE_MB": str(2 * size_mb)})
    print(f"\nbig instance: {size:.0f} MiB plain, one association, {elapsed:.1f} s")
    print("| instance (MiB) | RSS before (MB) | peak RSS (MB) | growth (MB) | growth / instance |")
    print("|---|---|---|---|---|")
    print(f"| {size:.0f} | {before:.0f} | {peak:.0f} | {peak - before:.0f} | {(peak - before) / size:.2f}x |")


def _prepare_child(root: str, slices: int) -> None:
    """Spool a synthetic 512x512 CT series and queue its job (a process of its own: its memory is not measured)."""
    from dicomnode.db import make_engine, make_sessionmaker
    from dicomnode.migrate import upgrade
    from dicomnode.settings import Settings
    from tests.support.models import write_threshold_model
    from tests.support.spooled import queue_job, spool
    from tests.support.synthetic import make_series

    folder = Path(root)
    models = write_threshold_model(folder / "models", 40.0).parent
    settings = Settings.load(None, data_dir=folder / "infer", models_dir=models)
    settings.data_dir.mkdir()
    upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    series = make_series(n_slices=slices, rows=512, columns=512, series_description="CRASHTEST CT")
    for ds in series:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    spool(settings, sessions, series)
    queue_job(sessions, str(series[0].SeriesInstanceUID))


def _job_child(root: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One job through the real pipeline stages; reports RSS before and the peak (ru_maxrss) after."""
    import os

    from dicomnode.db import make_engine, make_sessionmaker
    from dicomnode.inference.registry import Registry
    from dicomnode.jobs.repository import claim
    from dicomnode.pipeline import PipelineContext, build_input, build_results, infer, load_series, write_results
    from dicomnode.settings import Settings

    folder = Path(root)
    settings = Settings.load(None, data_dir=folder / "infer", models_dir=folder / "models")
    sessions = make_sessionmaker(make_engine(settings.db_url))
    registry = Registry(settings.models_dir, "cpu")
    ctx = PipelineContext(settings, sessions, registry)
    manifest = registry.manifests["threshold-test"]
    registry.get(manifest.id)
    job = claim(sessions, "bench", 3600)
    assert job is not None
    before = rss_mb(os.getpid())
    datasets = load_series(sessions, job)
    image = build_input(manifest, datasets)
    inferred, seconds = infer(ctx, manifest, image)
    objects, outputs, summary = build_results(manifest, image, inferred, job)
    write_results(settings.results_dir, job.id, objects, outputs, seconds, summary)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put((before, peak, image.array.nbytes / 2**20, tuple(np.shape(image.array))))


def inference(slices: int, root: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    prepare = spawn.Process(target=_prepare_child, args=(str(root), slices))
    prepare.start()
    prepare.join()
    queue: multiprocessing.Queue = spawn.Queue()  # type: ignore[type-arg]
    child = spawn.Process(target=_job_child, args=(str(root), queue))
    child.start()
    before, peak, volume_mb, shape = queue.get(timeout=3600)
    child.join()
    print(f"\ninference: threshold model on a synthetic CT {shape} (float32 volume {volume_mb:.0f} MB)")
    print("| RSS before the job (MB) | peak RSS (MB) | growth (MB) | growth / volume |\n|---|---|---|---|")
    print(f"| {before:.0f} | {peak:.0f} | {peak - before:.0f} | {(peak - before) / volume_mb:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=4000, help="CT slices of 0.5 MB to receive (default 4000: 2 GB)")
    parser.add_argument("--big", type=int, default=0, metavar="MB",
                        help="also one plain instance of MB MiB (the receiver's peak against its size)")
    parser.add_argument("--inference", action="store_true", help="also the worker's peak on a large CT")
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--skip-receive", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_receive:
            receive(args.n, root)
        if args.big:
            big_instance(args.big, root)
        if args.inference:
            inference(args.slices, root)


if __name__ == "__main__":
    main()
