"""The CT nodule network that the sites and the server share, and what they must agree on around it.

A MONAI 3D UNet (one logit per voxel) on 2 mm isotropic RAS voxels, HU clipped to [-1000, 400] and
scaled by (HU + 500) / 500: the manifest of ``models/ct-nodule-demo`` says the same to the engine.
``training/train_ct.py`` trains the shipped model from phantoms with these functions; this module is
the one place they are defined, and it imports nothing from ``training/``. torch, MONAI, onnx and
ONNX Runtime are imported inside the functions (the ``fl`` extra), so importing this module loads none.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SPACING = 2.0  # mm, every axis
PATCH = (32, 32, 32)  # the training patch, and the example input of the ONNX export
CLIP = (-1000.0, 400.0)
MEAN, STD = -500.0, 500.0
# batch norm, not MONAI's default instance norm: instance statistics change with the field of view, and a
# first run trained on 32^3 patches had Dice 0.42 on 32^3 but 0.12 on 64^3 volumes
NETWORK: dict[str, Any] = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 1, "norm": "batch"}


def normalise(hu: np.ndarray) -> np.ndarray:
    """The manifest's ``clip`` then ``normalise = "fixed"``."""
    out: np.ndarray = ((np.clip(hu, *CLIP) - MEAN) / STD).astype(np.float32)
    return out


def network() -> Any:
    """A fresh network; its weights come from torch's generator (see :func:`seed_everything`)."""
    from monai.networks.nets.unet import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=1, **NETWORK)


def loss() -> Any:
    """DiceCE on the logits, with smoothing 1 (not 1e-5): a batch without nodules must not drive every
    probability to zero (a collapse to "all background" seen with the default smoothing)."""
    from monai.losses.dice import DiceCELoss

    return DiceCELoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)


def seed_everything(seed: int, threads: int) -> None:
    """Seed Python, numpy and torch, use ``threads`` torch threads and deterministic algorithms only."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def mirror(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip image ``x`` and label ``y`` together along each axis with probability 1/2 (one draw per axis)."""
    for axis in range(x.ndim):
        if rng.random() < 0.5:
            x, y = np.flip(x, axis), np.flip(y, axis)
    return x, y


def sample_patch(image: np.ndarray, label: np.ndarray, patch: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A random ``patch``-edge crop of ``image`` and ``label`` (the whole axis when shorter), mirrored;
    returns contiguous float32 arrays."""
    start = [int(rng.integers(0, max(1, n - patch + 1))) for n in image.shape]
    box = tuple(slice(s, s + patch) for s in start)
    x, y = mirror(image[box], label[box].astype(np.float32), rng)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def export_onnx(model: Any, example: Any, path: Path, input_name: str, output_name: str,
                dynamic: dict[int, str]) -> None:
    """Export with the TorchScript-based exporter (opset 17), as one file without external data.

    Raises
    ------
    RuntimeError
        When the exporter wrote the weights as external data.
    """
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


def export_network(model: Any, path: Path) -> None:
    """Write ``model`` (a :func:`network`) to ``path`` as the manifest expects: input ``volume``, output
    ``logits``, any batch and any spatial size (divisible by 8)."""
    import torch

    export_onnx(model, torch.zeros(1, 1, *PATCH), path, "volume", "logits", {0: "batch", 2: "x", 3: "y", 4: "z"})


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
