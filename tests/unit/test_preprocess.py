from __future__ import annotations

import warnings

import numpy as np
import pytest

from dicomnode.inference.geometry import fit_2d, model_grid, resample
from dicomnode.inference.intensity import adjust, channels, window
from dicomnode.inference.manifest import InputSpec, Intensity


def test_window_is_the_dicom_linear_function() -> None:
    values = np.array([0.0, 500.0, 1499.5, 2000.0, 3500.0])  # centre 2000, width 3000: 500 -> 0, 3499 -> 1
    np.testing.assert_allclose(window(values, 2000.0, 3000.0),
                               [0.0, 0.0, -500 / 2999 + 0.5, 0.5 / 2999 + 0.5, 1.0])


@pytest.mark.parametrize(("spec", "expected"), [
    (Intensity(normalise="zscore"), [-1.2247449, 0.0, 1.2247449]),
    (Intensity(normalise="fixed", mean=10, std=5), [-2.0, -1.0, 0.0]),
    (Intensity(normalise="minmax"), [0.0, 0.5, 1.0]),
    (Intensity(clip=(2.0, 4.0), normalise="minmax"), [0.0, 1.0, 1.0]),
])
def test_normalisation(spec: Intensity, expected: list[float]) -> None:
    np.testing.assert_allclose(adjust(np.array([0.0, 5.0, 10.0]), spec), expected, rtol=1e-6)


def test_channel_replication() -> None:
    out = channels(np.ones((4, 5), np.float32), 3)
    assert out.shape == (3, 4, 5)


def test_pad_fit_keeps_the_aspect_and_maps_back() -> None:
    spec = InputSpec(dimensions=2, size=(64, 64), fit="pad")
    fit = fit_2d((128, 64), spec)
    assert (fit.scaled_shape, fit.offset) == ((64, 32), (0, 16))
    image = np.zeros((128, 64), np.float32)
    image[:, 32:] = 1
    model = fit.to_model(image)
    assert model.shape == (64, 64) and model[:, :16].max() == 0 and model[:, -16:].max() == 0
    back = fit.to_source(model[None])[0]
    assert back.shape == (128, 64)
    assert np.abs(back - image).mean() < 0.02


def test_canonical_grid_round_trip_is_exact_without_resampling() -> None:
    affine = np.array([[0, 0, 0.9, 0], [0, -1.1, 0, 0], [-2, 0, 0, 0], [0, 0, 0, 1.0]])  # sagittal-ish
    array = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    grid = model_grid(array.shape, affine, InputSpec(orientation="RAS"))
    model = grid.to_model(array)
    assert model.shape == (8, 7, 6)
    np.testing.assert_array_equal(grid.to_source(model[None])[0], array)


def test_target_spacing_sets_the_model_grid() -> None:
    affine = np.diag([2.0, 0.5, 0.5, 1.0])
    grid = model_grid((10, 40, 40), affine, InputSpec(orientation="LPS", spacing=(1.0, 1.0, 1.0)))
    assert grid.model_shape == (20, 20, 20)
    assert resample(np.ones((10, 40, 40)), grid.model_shape).shape == (20, 20, 20)


def test_pad_fit_into_a_grid_that_is_not_square_centres_on_each_axis_by_its_own_size() -> None:
    """A square image into a 40 x 80 grid: scaled to 40 x 40, padded 0 rows and 20 columns on each side."""
    fit = fit_2d((100, 100), InputSpec(dimensions=2, size=(40, 80), fit="pad"))
    assert (fit.scaled_shape, fit.model_shape, fit.offset) == ((40, 40), (40, 80), (0, 20))


def test_without_a_grid_the_image_keeps_its_shape() -> None:
    fit = fit_2d((128, 64), InputSpec(dimensions=2))
    assert (fit.scaled_shape, fit.model_shape, fit.offset) == ((128, 64), (128, 64), (0, 0))
    image = np.arange(128 * 64, dtype=np.float32).reshape(128, 64)
    np.testing.assert_array_equal(fit.to_model(image), image)
    np.testing.assert_array_equal(fit.to_source(np.stack([image, -image])), np.stack([image, -image]))  # a 2D seg's


def test_a_padded_image_is_padded_with_its_minimum_as_float32() -> None:
    fit = fit_2d((4, 2), InputSpec(dimensions=2, size=(4, 4), fit="pad"))
    out = fit.to_model(np.array([[5, 6], [7, 8], [9, 10], [11, 12]], dtype=np.float32))
    assert out.dtype == np.float32 and out.tolist() == [[5, 5, 6, 5], [5, 7, 8, 5], [5, 9, 10, 5], [5, 11, 12, 5]]


@pytest.mark.parametrize("normalise", ["minmax", "zscore"])
def test_a_flat_image_normalises_to_zeros_never_to_nan(normalise: str) -> None:
    """A blank frame (every pixel the same: a detector's dark frame, a padded slice) has no range and no
    spread: it becomes zeros, so that no NaN reaches the model, and no warning the log."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = adjust(np.full((4, 5), 300, np.int16), Intensity(normalise=normalise))
    assert out.dtype == np.float32 and np.array_equal(out, np.zeros((4, 5), np.float32))
