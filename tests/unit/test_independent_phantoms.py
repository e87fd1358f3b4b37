"""The independent phantom family (training/independent.py): deterministic, well formed, balanced, honest masks."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from training import independent
from training.independent import ct_chest, radiograph, radiograph_lungs


def test_radiograph_is_deterministic_per_seed() -> None:
    a, b, other = radiograph(11), radiograph(11), radiograph(12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.opacity, b.opacity) and a.finding == b.finding
    assert not np.array_equal(a.image, other.image)


def test_another_noise_draw_is_the_same_patient_and_opacity() -> None:
    # what training/ceiling.py measures the ideal observer with: only the noise may differ
    a, same, other = radiograph(11, finding=True), radiograph(11, finding=True, noise=11), radiograph(
        11, finding=True, noise=12)
    assert np.array_equal(a.image, same.image)
    assert np.array_equal(a.opacity, other.opacity) and not np.array_equal(a.image, other.image)
    difference = a.image - other.image  # noise: zero mean, far smaller than the picture's contrast
    assert abs(float(difference.mean())) < 0.1 * float(difference.std()) < 0.1 * float(np.ptp(a.image))


@pytest.mark.parametrize("shape", [(128, 128), (96, 160)])
def test_radiograph_shapes_and_types(shape: tuple[int, int]) -> None:
    for finding in (True, False):
        r = radiograph(3, shape, finding=finding)
        assert r.image.shape == shape and r.image.dtype == np.float32 and np.isfinite(r.image).all()
        assert r.opacity.shape == shape and r.opacity.dtype == np.bool_
        assert r.finding is finding
        assert bool(r.opacity.any()) == finding


def test_radiograph_findings_are_about_half_positive() -> None:
    positives = sum(radiograph(independent.VALIDATION_SEED_BASE + i, (64, 64)).finding for i in range(120))
    assert 0.35 * 120 <= positives <= 0.65 * 120


def test_radiograph_opacity_lies_in_a_lung_and_is_denser() -> None:
    """The mask is inside the lung fields, and the matched negative of the same seed is darker there."""
    for seed in range(12):
        positive, negative = radiograph(seed, finding=True), radiograph(seed, finding=False)
        lungs = radiograph_lungs(seed)
        assert positive.opacity.any() and not (positive.opacity & ~lungs).any()
        assert not negative.opacity.any()
        assert (positive.image - negative.image)[positive.opacity].mean() > 0
        # the same patient: away from the opacity the pair differs only where the blur carries it
        far = ~ndimage.binary_dilation(positive.opacity, iterations=12)
        assert np.abs(positive.image - negative.image)[far].max() < 1e-3 * np.ptp(negative.image) + 1e-3


def test_radiograph_heart_is_on_the_image_right_and_lungs_are_dark() -> None:
    """Patient's left is image right: the dense heart shifts mean density right of centre in the lower chest."""
    right_heavier = 0
    for seed in range(10):
        r = radiograph(seed, (128, 128), finding=False)
        lungs = radiograph_lungs(seed)
        assert np.median(r.image[lungs]) < np.median(r.image[~lungs])
        rows = np.flatnonzero(lungs.any(axis=1))
        lower = slice(int(rows[0] + 0.6 * (rows[-1] - rows[0])), int(rows[-1]))
        band = lungs[lower]
        cols = np.flatnonzero(band.any(axis=0))
        centre = (cols[0] + cols[-1]) // 2
        right_heavier += int(band[:, centre:].sum() < band[:, :centre].sum())  # less lung on the heart's side
    assert right_heavier >= 8


def test_ct_is_deterministic_per_seed() -> None:
    a, b = ct_chest(5, (32, 32, 32), nodules=2), ct_chest(5, (32, 32, 32), nodules=2)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.nodules, b.nodules) and a.count == b.count
    assert not np.array_equal(a.hu, ct_chest(6, (32, 32, 32), nodules=2).hu)


def test_ct_shapes_types_and_ranges() -> None:
    ct = ct_chest(1, (48, 40, 36), spacing=2.5)
    assert ct.hu.shape == (48, 40, 36) and ct.hu.dtype == np.float32
    assert ct.nodules.shape == ct.hu.shape and ct.nodules.dtype == np.uint8 and set(np.unique(ct.nodules)) <= {0, 1}
    assert ct.spacing == 2.5 and -1024 <= ct.hu.min() and ct.hu.max() <= 3071
    assert (ct.hu < -700).mean() > 0.05, "a field of view around the lungs holds lung"


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_ct_nodule_count_is_honoured(count: int) -> None:
    for seed in (20, 21, 22):
        ct = ct_chest(seed, nodules=count)
        _, pieces = ndimage.label(ct.nodules)
        assert ct.count == count and pieces == count


def test_ct_nodule_count_from_the_seed_covers_zero_to_three() -> None:
    counts = {ct_chest(independent.TEST_SEED_BASE + i, (24, 24, 24), spacing=4.0).count for i in range(24)}
    assert counts == {0, 1, 2, 3}


def test_ct_nodules_are_dense_and_sit_in_lung_inside_the_body() -> None:
    for seed in range(30, 38):
        ct = ct_chest(seed, nodules=3)
        labels, pieces = ndimage.label(ct.nodules)
        for piece in range(1, pieces + 1):
            nodule = labels == piece
            shell = ndimage.binary_dilation(nodule, iterations=2) & ~nodule
            assert (ct.hu[shell] < -500).mean() > 0.3, "a nodule is surrounded, at least in part, by lung"
            lung = ct.hu[shell][ct.hu[shell] < -500]
            assert ct.hu[nodule].mean() > np.median(lung) + 150, "denser than the lung around it"
            where = np.argwhere(nodule)
            assert where.min() >= 1 and (np.asarray(ct.hu.shape) - 1 - where.max(axis=0)).min() >= 1
        body = ndimage.binary_fill_holes(ct.hu > -500)
        lung_or_body = body | (ct.hu < -500)
        assert lung_or_body[ct.nodules.astype(bool)].all()


def test_ct_orientation_is_ras() -> None:
    """+y anterior: the spine (bone) is posterior, at low y; the table is under the patient's back."""
    ct = ct_chest(8, (96, 96, 24), spacing=4.0, nodules=0)
    bone = ct.hu > 400
    ys = np.argwhere(bone[:, :, 12])[:, 1]
    assert np.median(ys) < 48


def test_generation_is_fast() -> None:
    radiograph(0)
    ct_chest(0)

    def best(call: object, repeats: int) -> float:
        times = []
        for seed in range(repeats):
            start = time.process_time()
            call(seed)  # type: ignore[operator]
            times.append(time.process_time() - start)
        return min(times)

    # process time, so that other work on a shared machine does not count; budgets: 50 ms and 0.5 s
    assert best(lambda s: radiograph(s), 5) < 0.05 * 2
    assert best(lambda s: ct_chest(s), 3) < 0.5 * 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        radiograph(-1)
    with pytest.raises(ValueError):
        ct_chest(0, nodules=4)
    with pytest.raises(ValueError):
        ct_chest(0, (64, 64))  # type: ignore[arg-type]
