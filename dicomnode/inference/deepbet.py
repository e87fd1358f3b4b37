"""deepbet 1.0.2 brain extraction, run on the node's own volume.

The two TorchScript networks (a coarse bounding-box net at 128^3 and the brain net at 256^3) and the
pre/post-processing follow ``deepbet/bet.py::BrainExtraction`` of deepbet 1.0.2 (MIT licence, Fisch et
al.). Differences: the volume comes from DICOM, not NIfTI; the device is chosen by the node; the
networks are loaded once and kept warm.
"""

from __future__ import annotations

import logging
import time

import cc3d
import fill_voids
import numpy as np
import torch
import torch.nn.functional as F

from dicomnode.errors import ModelError, SeriesNotUsable
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.registry import select_device
from dicomnode.inference.result import ModelInput, SegmentationResult
from dicomnode.inference.volume import Volume, ras_reorientation
from dicomnode.log import extra

log = logging.getLogger(__name__)

SMALL_SHAPE = (128, 128, 128)
SHAPE = (256, 256, 256)
BBOX_MARGIN = 0.1
THRESHOLD = 0.5


class DeepbetModel:
    """Both networks loaded on one device; :meth:`predict` returns a boolean brain mask."""

    def __init__(self, manifest: Manifest, device: str) -> None:
        self.manifest = manifest
        self.device = select_device(device)
        paths = {f.name: manifest.resolve(f) for f in manifest.files}
        started = time.perf_counter()
        try:
            self._model = torch.jit.load(str(paths["model.pt"]), map_location=self.device).eval()
            self._bbox_model = torch.jit.load(str(paths["bbox_model.pt"]), map_location=self.device).eval()
        except (KeyError, RuntimeError) as exc:
            raise ModelError(f"deepbet weights could not be loaded: {exc}") from exc
        log.info("model loaded", extra=extra(model=manifest.id, device=self.device,
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
        with torch.inference_mode():
            probability, bbox = self._run_model(canonical)
        mask = _postprocess(probability > THRESHOLD, bbox)
        return reorientation.invert(mask)

    def _run_model(self, x_np: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
        x = torch.nan_to_num(torch.from_numpy(x_np).to(self.device))
        mask = torch.zeros_like(x)
        x_small = F.interpolate(x[None, None], SMALL_SHAPE, mode="nearest-exact")[0, 0]
        low, high = x_small.quantile(0.005), x_small.quantile(0.995)
        mask_small = self._bbox_model(_normalize(x_small, low, high)[None, None])[0, 1]
        largest = _keep_largest_component((mask_small > 0.5).float().cpu().numpy())
        bbox = _bbox_with_margin(torch.from_numpy(largest), tuple(mask.shape), BBOX_MARGIN)
        crop = F.interpolate(x[bbox][None, None], SHAPE, mode="nearest-exact")[0, 0]
        mask_bbox = self._model(_normalize(crop, low, high)[None, None])[0, 1]
        mask[bbox] = F.interpolate(mask_bbox[None, None], mask[bbox].shape,
                                         mode="nearest-exact")[0, 0]
        return mask.cpu().numpy(), bbox


def _normalize(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    x = ((x - low) / (high - low)).clamp(min=0, max=1)
    x = (x - x.mean()) / x.std()
    return 0.226 * x + 0.449


def _keep_largest_component(mask: np.ndarray) -> np.ndarray:
    labels = cc3d.connected_components(mask)
    if not np.any(labels):
        raise ModelError("deepbet found no brain in this volume")
    largest = np.bincount(labels[labels != 0]).argmax()
    mask[labels != largest] = 0
    return mask


def _bbox_with_margin(mask_small: torch.Tensor, shape: tuple[int, ...], margin: float) -> tuple[slice, ...]:
    ranges = [torch.where(mask_small.mean(dims) > 0.02)[0] for dims in [(1, 2), (0, 2), (0, 1)]]
    if any(r.numel() == 0 for r in ranges):
        raise ModelError("deepbet found too little foreground for a bounding box")
    center = torch.tensor([(r.max() + 1 + r.min()) / 2 for r in ranges])
    size = torch.tensor([(r.max() + 1) - r.min() for r in ranges])
    scale = torch.tensor(shape) / torch.tensor(mask_small.shape)
    center, size = (scale * center).round(), ((1 + 2 * margin) * scale * size).round()
    return tuple(slice(max(0, int(c - s / 2)), min(n, int(c + s / 2)), 1)
                 for c, s, n in zip(center.tolist(), size.tolist(), shape, strict=True))


def _postprocess(mask: np.ndarray, bbox: tuple[slice, ...]) -> np.ndarray:
    mask[bbox] = _keep_largest_component(mask[bbox])
    mask[bbox] = fill_voids.fill(mask[bbox])
    return mask
