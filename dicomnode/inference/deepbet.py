"""deepbet 1.0.2 brain extraction, run on the node's own volume.

The two networks (a coarse bounding-box net at 128^3 and the brain net at 256^3) and the
pre/post-processing follow ``deepbet/bet.py::BrainExtraction`` of deepbet 1.0.2 (MIT licence, Fisch et
al.), rewritten in numpy. The networks run in ONNX Runtime (the generic engine's
:class:`~dicomnode.inference.onnx.OnnxSession`) from the ``.onnx`` files that
``training/export_deepbet.py`` derives from the wheel's weights; when those files are missing or do not
load, the wheel's TorchScript files run instead (torch is imported only then). Differences from
deepbet: the volume comes from DICOM, not NIfTI; the device is chosen by the node; the networks are
loaded once and kept warm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import cc3d
import fill_voids
import numpy as np

from dicomnode.errors import ModelError, SeriesNotUsable
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.result import ModelInput, SegmentationResult
from dicomnode.inference.volume import Volume, ras_reorientation
from dicomnode.log import extra

log = logging.getLogger(__name__)

SMALL_SHAPE = (128, 128, 128)
SHAPE = (256, 256, 256)
BBOX_MARGIN = 0.1
THRESHOLD = 0.5
NETWORKS = ("bbox_model", "model")  # file stems: <stem>.onnx (exported) or <stem>.pt (the wheel's)

Network = Callable[[np.ndarray], np.ndarray]  # (1, *spatial) -> (2, *spatial): background, brain
Runtime = Literal["auto", "onnxruntime", "torchscript"]


class DeepbetModel:
    """Both networks loaded on one device; :meth:`predict` returns a boolean brain mask.

    ``runtime = "auto"`` takes ONNX Runtime when both ``.onnx`` files resolve and load, else TorchScript.
    """

    def __init__(self, manifest: Manifest, device: str, threads: int = 0, runtime: Runtime = "auto") -> None:
        self.manifest = manifest
        started = time.perf_counter()
        self.runtime, self.device, (self._bbox_model, self._model) = _load(manifest, device, threads, runtime)
        log.info("model loaded", extra=extra(stage="infer", model=manifest.id, device=self.device, runtime=self.runtime,
                                             seconds=round(time.perf_counter() - started, 2)))

    def run(self, image: ModelInput) -> SegmentationResult:
        """The brain mask of a volume as a label map (label 1) on the source grid."""
        if not isinstance(image, Volume):
            raise SeriesNotUsable(f"model {self.manifest.id} takes a volume; this series is one 2D image")
        return SegmentationResult(labels=self.predict(image.array, image.affine).astype(np.uint8))

    def predict(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Brain mask for ``volume`` (any axis order; ``affine`` in LPS), in the same shape."""
        reorientation = ras_reorientation(affine)
        canonical = reorientation.apply(volume.astype(np.float32, copy=False))
        probability, bbox = self._run_model(canonical)
        mask = _postprocess(probability > THRESHOLD, bbox)
        return reorientation.invert(mask)

    def _run_model(self, x: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
        x = np.nan_to_num(x)
        x_small = _resize_nearest(x, SMALL_SHAPE)
        low, high = (float(q) for q in np.quantile(x_small, (0.005, 0.995)))
        mask_small = self._bbox_model(_normalize(x_small, low, high)[None])[1]
        largest = _keep_largest_component((mask_small > 0.5).astype(np.float32))
        bbox = _bbox_with_margin(largest, x.shape, BBOX_MARGIN)
        mask_bbox = self._model(_normalize(_resize_nearest(x[bbox], SHAPE), low, high)[None])[1]
        mask = np.zeros_like(x)
        mask[bbox] = _resize_nearest(mask_bbox, mask[bbox].shape)
        return mask, bbox


def _load(manifest: Manifest, device: str, threads: int, runtime: Runtime) -> tuple[str, str, list[Network]]:
    """(runtime, device, [bbox net, brain net]): ONNX Runtime first under ``auto``, TorchScript as fallback."""
    if runtime in ("auto", "onnxruntime"):
        try:
            from dicomnode.inference.onnx import OnnxSession  # the generic engine's backend

            sessions = [OnnxSession(manifest, device, threads, manifest.file(f"{stem}.onnx")) for stem in NETWORKS]
            if not (runtime == "auto" and device == "auto" and sessions[0].device == "cpu" and _torch_cuda()):
                return "onnxruntime", sessions[0].device, list(sessions)
            log.info("deepbet runs on TorchScript: this onnxruntime has no CUDA, torch has",
                     extra=extra(stage="infer", model=manifest.id))
        except (ImportError, ModelError) as exc:
            if runtime == "onnxruntime":
                raise ModelError(f"model {manifest.id}: ONNX Runtime cannot serve it: {exc}") from exc
            log.warning("deepbet runs on TorchScript: its ONNX files are not usable",
                        extra=extra(stage="infer", model=manifest.id, reason=str(exc)))
    from dicomnode.inference.torchscript import TorchScriptNetwork  # torch is imported only here

    networks = [TorchScriptNetwork(manifest, f"{stem}.pt", device) for stem in NETWORKS]
    return "torchscript", networks[0].device, list(networks)


def _torch_cuda() -> bool:
    """Whether torch would run on a GPU; torch is imported only when an NVIDIA device node exists."""
    if not Path("/dev/nvidia0").exists():
        return False
    import torch

    return bool(torch.cuda.is_available())


def _resize_nearest(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``torch.nn.functional.interpolate(mode="nearest-exact")``, indices computed in float32 as torch does."""
    index = [np.minimum(np.floor((np.arange(n, dtype=np.float32) + np.float32(0.5)) * (np.float32(m) / np.float32(n)))
                        .astype(np.intp), m - 1) for m, n in zip(x.shape, shape, strict=True)]
    return x[np.ix_(*index)]


def _normalize(x: np.ndarray, low: float, high: float) -> np.ndarray:
    x = np.clip((x - np.float32(low)) / np.float32(high - low), 0, 1)
    x = (x - x.mean()) / x.std(ddof=1)  # torch.std is the unbiased estimate
    result: np.ndarray = (0.226 * x + 0.449).astype(np.float32)
    return result


def _keep_largest_component(mask: np.ndarray) -> np.ndarray:
    labels = cc3d.connected_components(mask)
    if not np.any(labels):
        raise ModelError("deepbet found no brain in this volume")
    largest = np.bincount(labels[labels != 0]).argmax()
    mask[labels != largest] = 0
    return mask


def _bbox_with_margin(mask_small: np.ndarray, shape: tuple[int, ...], margin: float) -> tuple[slice, ...]:
    ranges = [np.nonzero(mask_small.mean(axis=dims) > 0.02)[0] for dims in ((1, 2), (0, 2), (0, 1))]
    if any(r.size == 0 for r in ranges):
        raise ModelError("deepbet found too little foreground for a bounding box")
    center = np.array([(r.max() + 1 + r.min()) / 2 for r in ranges], dtype=np.float32)
    size = np.array([(r.max() + 1) - r.min() for r in ranges], dtype=np.float32)
    scale = np.array(shape, dtype=np.float32) / np.array(mask_small.shape, dtype=np.float32)
    center, size = np.round(scale * center), np.round(np.float32(1 + 2 * margin) * scale * size)
    return tuple(slice(max(0, int(c - s / 2)), min(n, int(c + s / 2)), 1)
                 for c, s, n in zip(center.tolist(), size.tolist(), shape, strict=True))


def _postprocess(mask: np.ndarray, bbox: tuple[slice, ...]) -> np.ndarray:
    mask[bbox] = _keep_largest_component(mask[bbox])
    mask[bbox] = fill_voids.fill(mask[bbox])
    return mask
