"""Models: process start-to-ready and RSS for an ONNX-only node against the deepbet node; inference times.

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
from pathlib import Path

import numpy as np
from pydicom import dcmread

from dicomnode.inference.registry import Registry
from dicomnode.inference.volume import build_image, build_volume
from tests.support.models import write_classifier, write_threshold_model
from tests.support.net import free_port, port_open
from tests.support.peers import REPO
from tests.support.synthetic import make_radiograph, make_series

MNI = REPO.parent / "shared" / "data" / "mr_t1_brain_mni152"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_to_ready(models_dir: Path, n_models: int) -> tuple[float, float]:
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
            while not (port_open(port) and log.read_text().count("model loaded") >= n_models):
                if process.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError("node did not become ready: " + log.read_text()[-2000:])
                time.sleep(0.02)
            return time.perf_counter() - started, rss_mb(process.pid)
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
        for label, models, n in (("ONNX-only (4 models)", onnx_dir, 4), ("deepbet (torch)", REPO / "models", 1)):
            results = [start_to_ready(models, n) for _ in range(runs)]
            print(f"  {label:22}: {statistics.median(r[0] for r in results):6.2f} s, "
                  f"RSS {statistics.median(r[1] for r in results):7.1f} MiB")

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
