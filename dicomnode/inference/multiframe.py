"""Enhanced multi-frame volumes (Enhanced CT, Enhanced MR, Enhanced PET): one instance, many frames.

Geometry comes from the functional groups (PS3.3 C.7.6.16): Plane Position per frame, Plane Orientation
and Pixel Measures (shared or per frame), and Pixel Value Transformation for the rescale. Frames are
sorted along the slice normal, as single-frame slices are; :attr:`Volume.frame_order` takes a label
map back to the instance's own frame order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.errors import SeriesNotUsable

SPACING_TOLERANCE = 0.05


def is_multiframe(headers: Sequence[Dataset]) -> bool:
    return len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1) or 1) > 1


def _group(ds: Dataset, frame: int, name: str) -> Any:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame) and name in per_frame[frame]:
        return per_frame[frame][name][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and name in shared[0]:
        return shared[0][name][0]
    raise SeriesNotUsable(f"multi-frame image without {name}")


def geometry(ds: Dataset) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Per-frame positions ``(frames, 3)``, the orientation (6 values) and the pixel spacing; checks it is one grid."""
    frames = int(ds.NumberOfFrames)
    positions = np.array([[float(v) for v in _group(ds, i, "PlanePositionSequence").ImagePositionPatient]
                          for i in range(frames)])
    orientations = np.array([[float(v) for v in _group(ds, i, "PlaneOrientationSequence").ImageOrientationPatient]
                             for i in range(frames)])
    if not np.allclose(orientations, orientations[0], atol=1e-3):
        raise SeriesNotUsable("several orientations in one multi-frame image")
    spacing = _group(ds, 0, "PixelMeasuresSequence").PixelSpacing
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    along = np.sort(positions @ normal)
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        raise SeriesNotUsable("several frames share one position")
    if np.any(np.abs(gaps - np.median(gaps)) > SPACING_TOLERANCE * np.median(gaps)):
        raise SeriesNotUsable("frame spacing is not uniform (gaps or overlaps)")
    return positions, orientations[0], (float(spacing[0]), float(spacing[1]))


def rescaled_frames(ds: Dataset) -> np.ndarray:
    """All frames ``(frames, rows, columns)`` with each frame's rescale slope and intercept applied."""
    pixels = ds.pixel_array.astype(np.float32)
    if pixels.ndim != 3:
        raise SeriesNotUsable(f"expected grey-scale frames, got shape {pixels.shape}")
    out = np.empty_like(pixels)
    for i in range(pixels.shape[0]):
        try:
            transform = _group(ds, i, "PixelValueTransformationSequence")
        except SeriesNotUsable:
            transform = ds
        slope = float(transform.get("RescaleSlope", 1) or 1)
        intercept = float(transform.get("RescaleIntercept", 0) or 0)
        out[i] = pixels[i] * np.float32(slope) + np.float32(intercept)
    return out
