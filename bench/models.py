"""Models: process start-to-ready and RSS for an ONNX-only node against the bundled models' node; inference times.

Start-to-ready: ``python -m dicomnode serve`` from exec until its DICOM port is open and every model has
logged "model loaded" (warm); RSS is read from /proc once ready. Inference: the warm model on one
series, median of N runs (the site-style test models of tests/support/models.py, and deepbet on the
MNI152 template when ../shared/data is present).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread

from dicomnode.inference.registry import Registry, load_manifests
from dicomnode.inference.volume import build_image, build_volume
from tests.support.models import write_classifier, write_threshold_model
from tests.support.net import free_port, port_open
from tests.support.peers import REPO
from tests.support.synthetic import make_radiograph, make_series

MNI = REPO.parent / "shared" / "data" / "mr_t1_brain_mni152"


def proc_status_mb(pid: int, key: str = "VmRSS") -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True)
class NodeStart:
    seconds: float  # exec to ready: DICOM port open and every model warm
    rss_mb: float
    peak_rss_mb: float
    torch_loaded: bool  # libtorch mapped into the node process
    log: str


def _warm(log: str, model_ids: Iterable[str]) -> bool:
    """Every model has logged "model loaded" (deepbet: its own line, with the runtime, after both networks)."""
    lines = [line for line in log.splitlines() if "model loaded" in line]
    return all(any(f"model={m} " in line and (m != "deepbet" or "runtime=" in line) for line in lines)
               for m in model_ids)


def start_to_ready(models_dir: Path, model_ids: Iterable[str]) -> NodeStart:
    """Start ``python -m dicomnode serve`` on ``models_dir`` and measure it once ready, then stop it."""
    model_ids = list(model_ids)
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
        env |= {"DICOMNODE_DATA_DIR": f"{folder}/data", "DICOMNODE_PORT": str(port), "DICOMNODE_HOST": "127.0.0.1",
                "DICOMNODE_MODELS_DIR": str(models_dir), "DICOMNODE_MIN_FREE_DISK_MB": "1"}
        log = Path(folder) / "node.log"
        started = time.perf_counter()
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "dicomnode", "serve"], cwd=REPO, env=env,
                                       stdout=out, stderr=subprocess.STDOUT)
        try:
            while not (port_open(port) and _warm(log.read_text(), model_ids)):
                if process.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError("node did not become ready: " + log.read_text()[-2000:])
                time.sleep(0.02)
            seconds = time.perf_counter() - started
            maps = Path(f"/proc/{process.pid}/maps").read_text()
            return NodeStart(seconds, proc_status_mb(process.pid), proc_status_mb(process.pid, "VmHWM"),
                             "libtorch" in maps, log.read_text())
        finally:
            process.terminate()
            process.wait(60)


def timed(registry: Registry, model_id: str, image: object, runs: int) -> float:
    registry.run(model_id, image)  # type: ignore[arg-type]  # first run outside the timing
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        registry.run(model_id, image)  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as folder:
        onnx_dir = Path(folder) / "onnx"
        write_threshold_model(onnx_dir, 40.0)
        write_threshold_model(onnx_dir, 40.0, model_id="threshold-resampled", orientation="RAS",
                              input_extra="spacing = [1.0, 1.0, 1.0]")
        write_threshold_model(onnx_dir, 40.0, model_id="threshold-tiled",
                              input_extra="[input.tiling]\nroi = [32, 64, 64]\noverlap = 0.25")
        write_classifier(onnx_dir)
        print("start to ready (port open, every model warm), median of", runs)
        ids = ["region-classifier", "threshold-resampled", "threshold-test", "threshold-tiled"]
        for label, models, model_ids in (("ONNX-only (4 models)", onnx_dir, ids),
                                         ("bundled (models/)", REPO / "models", load_manifests(REPO / "models"))):
            results = [start_to_ready(models, model_ids) for _ in range(runs)]
            print(f"  {label:22}: {statistics.median(r.seconds for r in results):6.2f} s, "
                  f"RSS {statistics.median(r.rss_mb for r in results):7.1f} MiB, "
                  f"torch loaded: {results[0].torch_loaded}")

        registry = Registry(onnx_dir, "cpu")
        volume = build_volume(make_series(64, 128, 128, spacing=(0.9, 0.9), slice_step=1.5))
        pixels = np.full((512, 512), 1000, dtype=np.uint16)
        pixels[192:320, 192:320] = 3000
        image = build_image([make_radiograph(pixels)])
        print(f"per-model inference (warm, CPU), median of {runs}")
        for model_id, data, shape in (("threshold-test", volume, "64x128x128"),
                                      ("threshold-resampled", volume, "64x128x128 -> 1 mm RAS"),
                                      ("threshold-tiled", volume, "64x128x128, 32x64x64 windows"),
                                      ("region-classifier", image, "512x512 DX -> 64x64, with occlusion map")):
            print(f"  {model_id:20} {shape:38}: {timed(registry, model_id, data, runs) * 1000:8.1f} ms")
        if MNI.is_dir():
            deepbet = Registry(REPO / "models", "auto")
            mni = build_volume([dcmread(p) for p in sorted(MNI.iterdir())])
            print(f"  {'deepbet':20} {'MNI152 ' + 'x'.join(map(str, mni.array.shape)):38}: "
                  f"{timed(deepbet, 'deepbet', mni, runs) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
