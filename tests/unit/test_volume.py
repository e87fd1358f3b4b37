from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRBigEndian

from dicomnode.errors import SeriesNotUsable
from dicomnode.inference.volume import build_volume, check_series, native_pixels, ras_reorientation
from tests.support.synthetic import make_series

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def test_slices_sorted_along_normal_and_rescaled() -> None:
    series = make_series(n_slices=6, slope=2.0, intercept=-100.0)
    shuffled = [series[i] for i in (3, 0, 5, 1, 4, 2)]
    volume = build_volume(shuffled)
    positions = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert positions == sorted(positions)
    # slice k, row r holds ((k + 1) * 10 + r) * 2 - 100
    assert volume.array[0, 0, 0] == pytest.approx(20 * 1 - 100)
    assert volume.array[5, 3, 7] == pytest.approx((60 + 3) * 2 - 100)


def test_affine_maps_voxels_to_patient_positions() -> None:
    series = make_series(n_slices=5, spacing=(0.8, 0.9), slice_step=2.0, orientation=SAGITTAL)
    volume = build_volume(series)
    for k, ds in enumerate(volume.datasets):
        assert np.allclose(volume.affine @ [k, 0, 0, 1], [*map(float, ds.ImagePositionPatient), 1])
    # one row down = 0.8 mm along the column direction cosine (0, 0, -1)
    assert np.allclose(volume.affine[:3, 1], [0, 0, -0.8])
    assert np.allclose(volume.affine[:3, 2], [0, 0.9, 0])
    assert volume.voxel_volume_mm3 == pytest.approx(0.8 * 0.9 * 2.0)


def test_several_orientations_are_refused() -> None:
    series = make_series(n_slices=4) + make_series(n_slices=4, orientation=SAGITTAL)
    with pytest.raises(SeriesNotUsable, match="several orientations"):
        check_series(series)


def test_too_few_slices_are_refused() -> None:
    with pytest.raises(SeriesNotUsable, match=r"too few slices \(3 < 32\)"):
        check_series(make_series(n_slices=3), min_slices=32)


def test_gaps_are_refused() -> None:
    series = make_series(n_slices=6)
    del series[3]
    with pytest.raises(SeriesNotUsable, match="not uniform"):
        check_series(series)


def test_non_image_objects_are_refused() -> None:
    series = make_series(n_slices=3)
    del series[1].ImagePositionPatient
    with pytest.raises(SeriesNotUsable, match="not an image series"):
        check_series(series)


@pytest.mark.parametrize("orientation", [(1.0, 0, 0, 0, 1.0, 0), SAGITTAL, (1.0, 0, 0, 0, 0, -1.0)])
def test_reorientation_reaches_ras_and_back(orientation: tuple[float, ...]) -> None:
    volume = build_volume(make_series(n_slices=4, rows=5, columns=6, orientation=orientation))
    reorientation = ras_reorientation(volume.affine)
    canonical = reorientation.apply(volume.array)
    assert np.array_equal(reorientation.invert(canonical), volume.array)
    # Moving along canonical axis 0 must move to the patient's right (LPS x decreasing), axis 2 superior.
    ras_affine = np.diag([-1.0, -1.0, 1.0]) @ volume.affine[:3, :3]
    permuted = ras_affine[:, list(reorientation.axes)] * np.where(reorientation.flips, -1, 1)
    assert np.all(np.diag(permuted) > 0)


@pytest.mark.parametrize(("bits", "stored", "signed"), [(16, 16, 0), (16, 12, 0), (16, 12, 1), (16, 16, 1),
                                                        (8, 8, 0), (32, 32, 1)])
def test_native_pixels_equal_pydicoms_pixel_array(tmp_path: Path, bits: int, stored: int, signed: int) -> None:
    ds = make_series(n_slices=1, rows=5, columns=3)[0]
    rng = np.random.default_rng(11)
    values = rng.integers(0, 2**bits, size=(5, 3), dtype=np.uint64).astype(f"<u{bits // 8}")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    ds.PixelData = values.tobytes() + (b"\0" if values.nbytes % 2 else b"")
    ds.save_as(tmp_path / "im.dcm", enforce_file_format=True)
    read = dcmread(tmp_path / "im.dcm")
    native = native_pixels(read)
    assert native is not None
    assert native.dtype == read.pixel_array.dtype
    assert np.array_equal(native, read.pixel_array)


def test_native_pixels_leave_other_encodings_to_pydicom() -> None:
    big_endian = make_series(n_slices=1)[0]
    big_endian.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    colour = make_series(n_slices=1)[0]
    colour.SamplesPerPixel = 3
    short = make_series(n_slices=1)[0]
    short.PixelData = short.PixelData[:-2]
    assert native_pixels(make_series(n_slices=1)[0]) is not None
    assert [native_pixels(ds) for ds in (big_endian, colour, short)] == [None, None, None]


def test_each_slice_keeps_its_own_rescale() -> None:
    series = make_series(n_slices=3, slope=2.0, intercept=-100.0)
    series[1].RescaleSlope, series[1].RescaleIntercept = "0.5", "7"
    volume = build_volume(series)
    assert volume.array.dtype == np.float32
    assert volume.array[0, 2, 0] == pytest.approx((10 + 2) * 2 - 100)
    assert volume.array[1, 2, 0] == pytest.approx((20 + 2) * 0.5 + 7)
    assert volume.array[2, 2, 0] == pytest.approx((30 + 2) * 2 - 100)


def test_a_single_slice_is_a_regular_volume_without_a_spacing_to_check() -> None:
    """One slice has no gaps: nothing to compare, and no NumPy warning of a median over nothing (warnings are
    errors here, as they would be noise in the node's log)."""
    (header,) = make_series(n_slices=1, rows=8, columns=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_series([header])
