"""An enhanced multi-frame image's frames, each with its own Pixel Value Transformation (PS3.3 C.7.6.16.2.9):
per frame where the frame says, else the shared group's, else the image's own rescale."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.inference.multiframe import rescaled_frames


def _transform(slope: float, intercept: float) -> Dataset:
    group, transform = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = slope, intercept
    group.PixelValueTransformationSequence = [transform]
    return group


def _image(where: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.SamplesPerPixel = 2, 2, 2, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(8, dtype=np.uint16).tobytes()
    if where == "per frame":
        ds.PerFrameFunctionalGroupsSequence = [_transform(2, -1000), _transform(0.5, 10)]
    elif where == "shared":
        ds.SharedFunctionalGroupsSequence = [_transform(2, -1000)]
    else:
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    return ds


@pytest.mark.parametrize("where", ["per frame", "shared", "the image's own"])
def test_each_frame_gets_its_own_slope_and_intercept(where: str) -> None:
    stored = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    second = (0.5, 10) if where == "per frame" else (2, -1000)
    expected = np.stack([stored[0] * 2 - 1000, stored[1] * second[0] + second[1]])
    np.testing.assert_array_equal(rescaled_frames(_image(where)), expected)


def test_frames_without_any_rescale_are_the_stored_values() -> None:
    """No Pixel Value Transformation anywhere (an enhanced MR may have none): slope 1, intercept 0."""
    ds = _image("none")
    del ds.RescaleSlope, ds.RescaleIntercept
    np.testing.assert_array_equal(rescaled_frames(ds), np.arange(8, dtype=np.float32).reshape(2, 2, 2))


def test_a_transformation_with_only_an_intercept_keeps_slope_1() -> None:
    ds = _image("the image's own")
    del ds.RescaleSlope
    np.testing.assert_array_equal(rescaled_frames(ds), np.arange(8, dtype=np.float32).reshape(2, 2, 2) - 1000)
