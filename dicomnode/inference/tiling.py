"""A sliding window with overlap and blending, in numpy (as MONAI's ``SlidingWindowInferer``).

Windows of ``roi`` step by ``roi * (1 - overlap)`` along each axis (the last one flush with the end);
an array smaller than ``roi`` is padded at the end and cropped back. Overlapping outputs are blended
with constant or Gaussian weights (sigma = 0.125 * roi, as MONAI).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from dicomnode.inference.manifest import Tiling

Predict = Callable[[np.ndarray], np.ndarray]  # (C, *roi) -> (K, *roi)


def _starts(size: int, roi: int, overlap: float) -> list[int]:
    if size <= roi:
        return [0]
    step = max(1, int(roi * (1 - overlap)))
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def weights(roi: tuple[int, ...], blend: str) -> np.ndarray:
    if blend == "constant":
        return np.ones(roi, dtype=np.float32)
    out = np.ones((), dtype=np.float32)
    for n in roi:
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2
        sigma = 0.125 * n
        g = np.exp(-0.5 * (x / sigma) ** 2)
        out = np.multiply.outer(out, g)
    # as MONAI's compute_importance_map: not rescaled to a peak of 1 (for an even roi the peak is under 1),
    # floored at 1e-3 (never zero, so that every voxel gets a weight): the same weights where windows overlap
    result: np.ndarray = np.maximum(out, 1e-3).astype(np.float32)
    return result


def sliding_window(array: np.ndarray, spec: Tiling, predict: Predict) -> np.ndarray:
    """``array`` ``(C, *spatial)`` -> ``(K, *spatial)``, running ``predict`` on each window."""
    spatial = array.shape[1:]
    roi = tuple(int(r) for r in spec.roi)
    padded_shape = tuple(max(s, r) for s, r in zip(spatial, roi, strict=True))
    padding = [(0, 0)] + [(0, p - s) for p, s in zip(padded_shape, spatial, strict=True)]
    padded = np.pad(array, padding, mode="edge")
    w = weights(roi, spec.blend)
    total: np.ndarray | None = None
    norm = np.zeros(padded_shape, dtype=np.float32)
    for corner in itertools.product(*(_starts(p, r, spec.overlap) for p, r in zip(padded_shape, roi, strict=True))):
        window = tuple(slice(c, c + r) for c, r in zip(corner, roi, strict=True))
        out = predict(padded[(slice(None), *window)])
        if total is None:
            total = np.zeros((out.shape[0], *padded_shape), dtype=np.float32)
        total[(slice(None), *window)] += out * w
        norm[window] += w
    assert total is not None
    return (total / norm)[(slice(None), *(slice(0, s) for s in spatial))]
