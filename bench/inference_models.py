"""Rows of bench/inference.py: the demonstration models, torch eager vs ONNX Runtime (fp32, int8).

bench/inference.py runs each row in its own subprocess, so that its peak RSS (ru_maxrss) is its own and
an ONNX-only row never imports torch. Torch eager runs the same MONAI architecture as the shipped ONNX file, with seeded
random weights (dense convolutions take the same time whatever the weights). Medians; ratios come from
this one run. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CXR = REPO / "models" / "cxr-demo" / "model.onnx"
CXR_INT8 = REPO / "models" / "cxr-demo-int8" / "model.onnx"
CT = REPO / "models" / "ct-nodule-demo" / "model.onnx"


def median_time(fn: object, runs: int, warmups: int = 2) -> float:
    import statistics

    assert callable(fn)
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _gaussian(roi: tuple[int, ...]) -> np.ndarray:
    out = np.ones((), dtype=np.float32)
    for n in roi:
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2
        out = np.multiply.outer(out, np.exp(-0.5 * (x / (0.125 * n)) ** 2))
    result: np.ndarray = np.maximum(out / out.max(), 1e-3).astype(np.float32)
    return result


def sliding_window(volume: np.ndarray, roi: int, overlap: float, predict: object) -> np.ndarray:
    """As the engine's numpy sliding window (Gaussian blend), for ``(C, *spatial)`` arrays."""
    assert callable(predict)
    step = int(roi * (1 - overlap))

    def starts(n: int) -> list[int]:
        s = list(range(0, max(1, n - roi + 1), step))
        return s if s[-1] == n - roi else [*s, n - roi]

    w = _gaussian((roi,) * 3)
    total = np.zeros((1, *volume.shape[1:]), dtype=np.float32)
    norm = np.zeros(volume.shape[1:], dtype=np.float32)
    for corner in itertools.product(*(starts(n) for n in volume.shape[1:])):
        box = tuple(slice(c, c + roi) for c in corner)
        total[(slice(None), *box)] += predict(volume[(slice(None), *box)]) * w
        norm[box] += w
    out: np.ndarray = total / norm
    return out


def child(kind: str, runtime: str, threads: int, runs: int) -> dict[str, object]:
    """One row, in this (sub)process."""
    import resource

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    if kind == "cxr":
        from training.train_cxr import SIZE

        x = rng.normal(size=(1, 1, *SIZE)).astype(np.float32)
    elif kind == "ct":
        x = rng.normal(size=(1, 1, 96, 96, 96)).astype(np.float32)
    else:  # window: a 512 x 512 x 200 CT-sized array, 64^3 windows, overlap 0.25
        x = rng.normal(size=(1, 512, 512, 200)).astype(np.float32)
    if runtime == "torch":
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(threads)
        if kind == "cxr":
            from training.train_cxr import network
        else:
            from training.train_ct import network  # type: ignore[assignment]
        net = network().eval()
        tensor = torch.from_numpy(x)

        def run() -> None:
            with torch.inference_mode():
                net(tensor)
    else:
        import onnxruntime as ort

        path = {"cxr": CXR, "ct": CT, "window": CT}[kind] if runtime == "ort-fp32" else CXR_INT8
        if runtime == "ort-int8" and not path.exists():
            path = Path(tempfile.gettempdir()) / "dicomnode-bench-cxr-int8.onnx"
            if not path.exists():
                from training.quantize_cxr import quantize

                quantize(CXR, path, 64)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        if kind == "window":
            def run() -> None:
                sliding_window(x, 64, 0.25, lambda w: session.run(None, {name: w[None]})[0][0])
        else:
            def run() -> None:
                session.run(None, {name: x})
    ready = time.perf_counter() - started
    seconds = median_time(run, 1 if kind == "window" else runs)
    return {"kind": kind, "runtime": runtime, "seconds": seconds, "load_s": ready,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
