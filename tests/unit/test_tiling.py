"""The numpy sliding window against MONAI's SlidingWindowInferer on the same input (MONAI only in the test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai import inferers

from dicomnode.inference.manifest import Tiling
from dicomnode.inference.tiling import sliding_window


def window_dependent(x: np.ndarray) -> np.ndarray:
    """Not pointwise: each window's output depends on the window (its mean), so positions and weights matter."""
    return np.concatenate([x, x * 0 + x.mean()], axis=0)


def monai(x: np.ndarray, roi: tuple[int, ...], overlap: float, mode: str) -> np.ndarray:
    inferer = inferers.SlidingWindowInferer(roi_size=roi, overlap=overlap, mode=mode, sw_batch_size=1,
                                            padding_mode="replicate")

    def network(t):  # type: ignore[no-untyped-def]
        return torch.from_numpy(window_dependent(t[0].numpy()))[None]

    with torch.no_grad():
        out = inferer(torch.from_numpy(x)[None], network)
    return np.asarray(out[0].numpy())


@pytest.mark.parametrize(("shape", "roi", "overlap"), [
    ((20, 33, 17), (8, 16, 16), 0.5),
    ((12, 12, 12), (5, 7, 9), 0.25),
    ((40, 40), (16, 16), 0.6),
])
def test_constant_blend_matches_monai(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> None:
    x = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    ours = sliding_window(x, Tiling(roi=roi, overlap=overlap, blend="constant"), window_dependent)
    np.testing.assert_allclose(ours, monai(x, roi, overlap, "constant"), atol=1e-5)


def test_gaussian_blend_of_a_pointwise_model_is_exact_and_matches_monai() -> None:
    x = np.random.default_rng(1).normal(size=(1, 20, 30, 25)).astype(np.float32)
    ours = sliding_window(x, Tiling(roi=(8, 16, 16), overlap=0.25, blend="gaussian"), lambda w: w * 2)
    np.testing.assert_allclose(ours, x * 2, atol=1e-5)
    np.testing.assert_allclose(ours[:1], monai(x, (8, 16, 16), 0.25, "gaussian")[:1] * 2, atol=1e-4)


def test_smaller_than_roi_is_padded_and_cropped_back() -> None:
    x = np.arange(2 * 5 * 6, dtype=np.float32).reshape(1, 2, 5, 6)
    out = sliding_window(x, Tiling(roi=(4, 8, 8), overlap=0.5), lambda w: w + 1)
    np.testing.assert_allclose(out, x + 1, rtol=1e-6)


def test_a_volume_smaller_than_the_window_is_padded_with_its_edge_not_zeros() -> None:
    """As MONAI's ``padding_mode="replicate"``: the model sees the border's values repeated, so a 2x2 image
    in a 4x4 window has the mean of its edge-padded copy, (1 + 2*3 + 3*3 + 4*9) / 16, not 10 / 16."""
    x = np.array([[[1, 2], [3, 4]]], dtype=np.float32)
    out = sliding_window(x, Tiling(roi=(4, 4), overlap=0.5), window_dependent)
    np.testing.assert_allclose(out[0], x[0])
    np.testing.assert_allclose(out[1], np.full((2, 2), 52 / 16), rtol=1e-6)


@pytest.mark.parametrize(("shape", "roi", "overlap"), [((20, 30, 25), (8, 16, 16), 0.25), ((40, 40), (16, 16), 0.5)])
def test_gaussian_blend_of_a_window_dependent_model_matches_monai(shape: tuple[int, ...], roi: tuple[int, ...],
                                                                   overlap: float) -> None:
    """Where windows overlap, each one's output counts by its Gaussian weight at the voxel (sigma = roi / 8,
    as MONAI's default): a model whose output depends on the window shows the weights, a pointwise one not."""
    x = np.random.default_rng(2).normal(size=(1, *shape)).astype(np.float32)
    ours = sliding_window(x, Tiling(roi=roi, overlap=overlap, blend="gaussian"), window_dependent)
    np.testing.assert_allclose(ours, monai(x, roi, overlap, "gaussian"), atol=1e-4)
