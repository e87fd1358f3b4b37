"""Model grid <-> source grid for volumes: canonical orientation and resampling (numpy + scipy).

The forward path takes the source voxels ``(slice, row, column)`` to the model's axis order
(:func:`~dicomnode.inference.volume.canonical_reorientation`) and resamples them to the target spacing
or size; :meth:`Grid.to_source` takes per-channel model outputs back through the same steps in
reverse, so that the result lands exactly on the source grid (identity when no resampling is needed).
Resampling is linear and centre-aligned (``scipy.ndimage.zoom`` with ``grid_mode=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicomnode.inference.manifest import InputSpec
from dicomnode.inference.volume import Reorientation, canonical_reorientation

IDENTITY = Reorientation(axes=(0, 1, 2), flips=(False, False, False))


def resample(array: np.ndarray, shape: tuple[int, ...], order: int = 1) -> np.ndarray:
    """``array`` resampled to ``shape`` over the same field of view (voxel centres aligned)."""
    if tuple(array.shape) == tuple(shape):
        return array
    factors = [t / s for t, s in zip(shape, array.shape, strict=True)]
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # zoom rounds; pad or crop the last voxel
        out = out[tuple(slice(0, n) for n in shape)]
        out = np.pad(out, [(0, n - m) for n, m in zip(shape, out.shape, strict=True)], mode="edge")
    return np.asarray(out)


@dataclass(frozen=True)
class Grid:
    """How the source volume maps onto the model's grid, and back."""

    reorientation: Reorientation
    oriented_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def to_model(self, array: np.ndarray) -> np.ndarray:
        return resample(self.reorientation.apply(array), self.model_shape)

    def to_source(self, channels: np.ndarray) -> np.ndarray:
        """``(C, *model_shape)`` -> ``(C, slices, rows, columns)`` on the source grid."""
        return np.stack([self.reorientation.invert(resample(c, self.oriented_shape)) for c in channels])


def model_grid(shape: tuple[int, ...], affine: np.ndarray, spec: InputSpec) -> Grid:
    """The grid for a volume of ``shape`` with LPS ``affine`` under the manifest's input spec."""
    reorientation = IDENTITY if spec.orientation == "source" else canonical_reorientation(affine, spec.orientation)
    oriented = tuple(shape[a] for a in reorientation.axes)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[list(reorientation.axes)]
    if spec.size is not None:
        target = tuple(spec.size)
    elif spec.spacing is not None:
        target = tuple(max(1, round(n * s / t)) for n, s, t in zip(oriented, spacing, spec.spacing, strict=True))
    else:
        target = oriented
    return Grid(reorientation=reorientation, oriented_shape=oriented, model_shape=target)


@dataclass(frozen=True)
class Fit2D:
    """How a 2D image ``(rows, columns)`` is brought to the model's ``size``: resized, or scaled to fit and padded."""

    source_shape: tuple[int, int]
    scaled_shape: tuple[int, int]
    model_shape: tuple[int, int]
    offset: tuple[int, int]

    def to_model(self, image: np.ndarray) -> np.ndarray:
        scaled = resample(image, self.scaled_shape)
        if self.scaled_shape == self.model_shape:
            return scaled
        out = np.full(self.model_shape, float(image.min()), dtype=np.float32)
        out[self.offset[0]:self.offset[0] + self.scaled_shape[0],
            self.offset[1]:self.offset[1] + self.scaled_shape[1]] = scaled
        return out

    def to_source(self, channels: np.ndarray) -> np.ndarray:
        """``(C, *model_shape)`` -> ``(C, rows, columns)``."""
        crop = channels[:, self.offset[0]:self.offset[0] + self.scaled_shape[0],
                        self.offset[1]:self.offset[1] + self.scaled_shape[1]]
        return np.stack([resample(c, self.source_shape) for c in crop])


def fit_2d(shape: tuple[int, int], spec: InputSpec) -> Fit2D:
    if spec.size is None:
        return Fit2D(shape, shape, shape, (0, 0))
    size = (int(spec.size[0]), int(spec.size[1]))
    if spec.fit == "resize":
        return Fit2D(shape, size, size, (0, 0))
    scale = min(size[0] / shape[0], size[1] / shape[1])
    scaled = (max(1, min(size[0], round(shape[0] * scale))), max(1, min(size[1], round(shape[1] * scale))))
    return Fit2D(shape, scaled, size, ((size[0] - scaled[0]) // 2, (size[1] - scaled[1]) // 2))
