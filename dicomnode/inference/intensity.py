"""Intensities for the model (pure numpy): VOI LUT, MONOCHROME1 inversion, window, clip, normalisation.

Rescale slope and intercept (the Modality LUT) are applied when the volume or image is built. For a
radiograph, the image's own VOI LUT or window (``voi_lut = true``) comes next, then MONOCHROME1 is
inverted within the range those steps can produce, so that bright means dense for every image.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from dicomnode.inference.manifest import Intensity


def _stored_range(ds: Dataset) -> np.ndarray:
    bits = int(ds.get("BitsStored", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0):
        return np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=np.int32)
    return np.arange(0, 2**bits, dtype=np.int32 if bits < 32 else np.int64)


def _voi(values: np.ndarray, ds: Dataset, use: bool) -> np.ndarray:
    if use and "VOILUTSequence" in ds:  # a LUT is indexed by (integer) modality values
        return np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), ds), dtype=np.float32)
    if use and "WindowCenter" in ds:
        return np.asarray(apply_voi_lut(values, ds), dtype=np.float32)
    return values.astype(np.float32, copy=False)


def display_values(values: np.ndarray, ds: Dataset, spec: Intensity) -> np.ndarray:
    """Modality-LUT values of a 2D image -> VOI LUT (when asked) -> MONOCHROME1 inverted (when asked)."""
    out = _voi(values, ds, spec.voi_lut)
    if spec.invert_monochrome1 and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        possible = _voi(np.asarray(apply_modality_lut(_stored_range(ds), ds), dtype=np.float32), ds, spec.voi_lut)
        out = float(possible.min()) + float(possible.max()) - out
    return out


def window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """The linear VOI function of PS3.3 C.11.2.1.2.1, to the range [0, 1]."""
    out = (values - (centre - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return np.clip(out, 0.0, 1.0)


def adjust(values: np.ndarray, spec: Intensity) -> np.ndarray:
    """Window or clip, then normalise (z-score, fixed mean/std, or min-max to [0, 1])."""
    out = values.astype(np.float32, copy=True)
    if spec.window is not None:
        out = window(out, *spec.window)
    if spec.clip is not None:
        out = np.clip(out, *spec.clip)
    if spec.normalise == "zscore":
        std = float(out.std())
        out = (out - float(out.mean())) / (std if std > 0 else 1.0)
    elif spec.normalise == "fixed":
        out = (out - spec.mean) / spec.std
    elif spec.normalise == "minmax":
        low, high = float(out.min()), float(out.max())
        out = (out - low) / (high - low) if high > low else np.zeros_like(out)
    return out.astype(np.float32, copy=False)


def channels(values: np.ndarray, n: int) -> np.ndarray:
    """``(*spatial)`` -> ``(n, *spatial)``: the grey image replicated for n-channel (ImageNet-style) inputs."""
    return np.repeat(values[None], n, axis=0)
