"""The distance to a model's training distribution (dicomnode/inference/distribution.py), its manifest section,
its /metrics counter and the drift check's use of the same reference. Small seeded arrays; no model runs."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from dicomnode.inference import distribution
from dicomnode.inference.distribution import (
    TEMPLATE_SHAPE,
    DistributionCheck,
    _blocks,
    build_reference,
    check,
    distance,
    reference_toml,
)
from dicomnode.inference.manifest import Manifest, Reference
from dicomnode.monitoring.models import INPUT_DISTANCE, ModelMetrics, drift_check, reference_ranges


def _images(seed: int, n: int, invert: bool = False) -> list[np.ndarray]:
    """Bright centre, dark sides (a crude radiograph), z-scored, with noise; ``invert``: contrast inverted."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, 32)
    base = np.exp(-(x[None, :] ** 2) / 0.1) + 0.3 * np.exp(-(x[:, None] ** 2) / 0.5)
    out = []
    for _ in range(n):
        image = base * rng.uniform(0.8, 1.2) + rng.normal(0, 0.05, base.shape)
        image = -image if invert else image
        out.append(((image - image.mean()) / image.std()).astype(np.float32))
    return out


def _reference(template: bool = True) -> Reference:
    built = build_reference(_images(1, 60), {"Opacity": list(np.linspace(0, 1, 60))}, template=template)
    return Reference.model_validate(tomllib.loads(reference_toml(built))["reference"])


def test_the_reference_round_trips_through_the_manifest_and_its_own_draws_are_inside() -> None:
    reference = _reference()
    assert reference.samples == 60 and len(reference.quantiles) == len(reference.levels) == len(reference.scale)
    assert reference.template_shape == (16, 16) and reference.correlation is not None
    assert reference.outputs["Opacity"].mean == pytest.approx(0.5)
    inside = [check(reference, x[None]) for x in _images(2, 20)]
    assert all(not c.outside for c in inside) and max(c.distance for c in inside) < reference.threshold
    # the template is the mean training image's 16 x 16 block means, kept to 4 decimals
    expected = np.mean([_blocks(x.astype(np.float64), TEMPLATE_SHAPE) for x in _images(1, 60)], axis=0).ravel()
    assert np.abs(np.asarray(reference.template) - expected).max() <= 5e-5
    # the correlation with the template: the training draws' median and spread, kept to 5 decimals
    template = expected.reshape(TEMPLATE_SHAPE)
    drawn = [distribution.features(x, distribution.LEVELS, template)[-1] for x in _images(1, 60)]
    spread = distribution._spread(np.asarray(drawn)[:, None])[0]
    assert reference.correlation == pytest.approx((float(np.median(drawn)), float(spread)), abs=2e-5)
    assert 0 < reference.correlation[1] < 0.5  # a spread of a correlation: a fraction, never rounded away


def test_an_inverted_image_is_outside_though_its_histogram_alone_might_pass() -> None:
    reference = _reference()
    flagged = [check(reference, x[None]) for x in _images(3, 10, invert=True)]
    assert all(c.outside for c in flagged)
    assert DistributionCheck(2.0, 1.0).outside and not DistributionCheck(1.0, 1.0).outside


def test_a_volume_of_other_intensities_is_outside() -> None:
    rng = np.random.default_rng(4)
    volumes = [np.clip(rng.normal(-0.7, 0.1, (16, 16, 16)), -1, 1) for _ in range(40)]  # lung-like
    built = build_reference(volumes, {}, template=False)
    reference = Reference.model_validate(tomllib.loads(reference_toml(built))["reference"])
    assert reference.template == () and reference.correlation is None
    assert distance(reference, volumes[0]) < reference.threshold
    assert distance(reference, np.full((16, 16, 16), 1.1)) > reference.threshold  # soft tissue only


def test_the_manifest_refuses_a_reference_whose_vectors_disagree() -> None:
    with pytest.raises(ValueError, match="one value each per level"):
        Reference(samples=1, levels=(0.5,), quantiles=(0.0, 1.0), scale=(1.0,), threshold=3.0)
    with pytest.raises(ValueError, match="template_shape"):
        Reference(samples=1, levels=(0.5,), quantiles=(0.0,), scale=(1.0,), threshold=3.0, template=(1.0, 2.0))


def _manifest(reference: Reference) -> Manifest:
    return Manifest.model_validate({
        "manifest_version": 2, "id": "cxr-like", "version": "1", "name": "n", "task": "classification",
        "licence": "x", "intended_use": "test", "files": [{"name": "m.onnx", "sha256": "0" * 64}],
        "input": {"dimensions": 2, "size": [32, 32]},
        "output": {"activation": "sigmoid", "drift_window": 12,
                   "classes": [{"index": 0, "label": "Opacity", "threshold": 0.5,
                                "finding": {"scheme": "99X", "value": "O", "meaning": "Opacity"}}]},
        "reference": reference.model_dump()})


def test_outside_inputs_are_counted_and_the_drift_check_uses_the_reference() -> None:
    reference = _reference()
    manifest = _manifest(reference)
    ranges = reference_ranges(manifest)
    assert ranges[INPUT_DISTANCE] == (0.0, reference.threshold)
    low, high = ranges["Opacity"]
    assert 0.0 <= low < 0.5 < high <= 1.0
    metrics = ModelMetrics(CollectorRegistry(), {manifest.id: manifest})
    outside = DistributionCheck(reference.threshold * 3, reference.threshold)
    for _ in range(12):
        metrics.observe(manifest.id, 0.1, {"Opacity": 0.5}, outside)
    text = metrics.exposition()
    assert 'dicomnode_model_outside_distribution_total{model="cxr-like"} 12.0' in text
    assert 'dicomnode_model_drift{model="cxr-like",output="input distance"} 1.0' in text
    assert any("input distance" in w for w in metrics.warnings())
    drift = {d.output: d for d in drift_check(manifest, {"Opacity": [0.99] * 12})}
    assert drift["Opacity"].out_of_range  # a run of confident positives leaves the reference outputs' range


def test_blocks_average_each_block_and_a_grid_as_fine_as_the_image_is_the_image() -> None:
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(distribution._blocks(x, (4, 4)), x)  # one pixel per block
    np.testing.assert_array_equal(distribution._blocks(x, (2, 2)), [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_array_equal(distribution._blocks(np.ones((5, 7)), (2, 3)), np.ones((2, 3)))  # edges cropped
