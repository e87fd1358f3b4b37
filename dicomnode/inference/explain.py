"""Occlusion sensitivity, model-agnostic: how much each region of the input supports a class.

A patch (filled with the image's mean) slides over the model input with a stride; the drop in the
class probability is credited to every voxel the patch covered, averaged over the patches that covered
it, clipped at zero and scaled to [0, 1] by its maximum (Zeiler and Fergus, 2014).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from dicomnode.inference.manifest import Explanation

Probabilities = Callable[[np.ndarray], np.ndarray]  # (C, *spatial) -> class probabilities (K,)


def _starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, max(1, size - patch + 1), stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def occlusion_maps(x: np.ndarray, classes: list[int], spec: Explanation, probabilities: Probabilities
                   ) -> dict[int, np.ndarray]:
    """For each class index in ``classes``, a map ``(*spatial)`` in [0, 1] on the model input's grid."""
    if not classes:
        return {}
    spatial = x.shape[1:]
    baseline = probabilities(x)
    fill = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
    drop = np.zeros((len(classes), *spatial), dtype=np.float64)
    count = np.zeros(spatial, dtype=np.float64)
    patch = [min(spec.patch, s) for s in spatial]
    for corner in itertools.product(*(_starts(s, p, spec.stride) for s, p in zip(spatial, patch, strict=True))):
        window = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
        occluded = x.copy()
        occluded[(slice(None), *window)] = np.broadcast_to(fill, occluded[(slice(None), *window)].shape)
        probs = probabilities(occluded)
        for i, cls in enumerate(classes):
            drop[i][window] += baseline[cls] - probs[cls]
        count[window] += 1
    maps = {}
    for i, cls in enumerate(classes):
        m = np.clip(drop[i] / np.maximum(count, 1), 0, None)
        peak = float(m.max())
        maps[cls] = (m / peak if peak > 0 else m).astype(np.float32)
    return maps
