"""What the training scripts share: seeding, ONNX export, metrics, SHA-256 and the manifest text."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DISCLAIMER = "research demonstration model trained on synthetic phantoms; not for clinical use"
REPO = Path(__file__).resolve().parent.parent


def arguments(description: str, default_out: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=REPO / default_out, help="output folder (model, manifest, metrics)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--smoke", action="store_true", help="a few iterations on tiny data (CI)")
    return parser.parse_args()


def seed_everything(seed: int, threads: int) -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def export_onnx(model: Any, example: Any, path: Path, input_name: str, output_name: str,
                dynamic: dict[int, str]) -> None:
    """Export with the TorchScript-based exporter (opset 17), as one file without external data."""
    import onnx
    import torch

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(path), opset_version=17, input_names=[input_name],
                          output_names=[output_name], dynamo=False,
                          dynamic_axes={input_name: dynamic, output_name: dynamic})
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise RuntimeError(f"{path} has external data")
    if path.with_suffix(".onnx.data").exists():
        raise RuntimeError(f"{path} wrote an external .onnx.data file")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "monai", "numpy", "scipy", "onnx", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted as one half)."""
    pos, neg = scores[truth], scores[~truth]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    p, t = prediction.astype(bool), truth.astype(bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else float(2 * int((p & t).sum()) / total)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def ort_session(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A batch -> first output function on an ONNX Runtime CPU session with ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return out

    return run
