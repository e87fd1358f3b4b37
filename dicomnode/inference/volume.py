"""Part-10 datasets of one series -> a 3D volume with its geometry, and back.

Slices are sorted along the slice normal (not by InstanceNumber), pixel values get RescaleSlope and
RescaleIntercept, and ``affine`` maps voxel indices ``(slice, row, column)`` to patient coordinates (LPS,
mm) as PS3.3 C.7.6.2.1.1 defines them. Series that cannot form one regular volume raise
:class:`~dicomnode.errors.SeriesNotUsable` with a sentence that says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomnode.errors import SeriesNotUsable
from dicomnode.inference.multiframe import geometry, is_multiframe, rescaled_frames

ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 0.05  # relative deviation of slice gaps from their median


@dataclass(frozen=True)
class Volume:
    """Voxels ``(slice, row, column)`` in float32, their LPS affine, and the sorted source datasets."""

    array: np.ndarray
    affine: np.ndarray
    datasets: tuple[Dataset, ...]
    frame_order: tuple[int, ...] = ()  # multi-frame: the source frame of each slice of ``array``

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def in_source_order(self, labels: np.ndarray) -> np.ndarray:
        """A map ``(slice, row, column)`` in the order of the source images or frames (what a SEG references)."""
        if not self.frame_order:
            return labels
        out = np.empty_like(labels)
        out[list(self.frame_order)] = labels
        return out


def _orientation(ds: Dataset) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)


def check_series(headers: Sequence[Dataset], min_slices: int = 1) -> None:
    """Raise :class:`SeriesNotUsable` unless ``headers`` can form one regular volume.

    Only header attributes are read, so this works on datasets read with ``stop_before_pixels``.
    """
    if not headers:
        raise SeriesNotUsable("no instances")
    if not is_multiframe(headers) and any(
            "Rows" not in ds or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds
            for ds in headers):
        raise SeriesNotUsable("not an image series with plane geometry (non-image objects or no "
                              "ImagePositionPatient/ImageOrientationPatient)")
    if is_multiframe(headers) and "ImageOrientationPatient" not in headers[0]:
        geometry(headers[0])
        if int(headers[0].NumberOfFrames) < min_slices:
            raise SeriesNotUsable(f"too few frames ({int(headers[0].NumberOfFrames)} < {min_slices})")
        return
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in headers):
        raise SeriesNotUsable("several multi-frame images, or a multi-frame image without functional groups")
    orientations = np.stack([_orientation(ds) for ds in headers])
    distinct = _distinct_rows(orientations)
    if distinct > 1:
        raise SeriesNotUsable(f"several orientations ({distinct}) in one series")
    if len({(int(ds.Rows), int(ds.Columns)) for ds in headers}) > 1:
        raise SeriesNotUsable("mixed image sizes in one series")
    if len(headers) < min_slices:
        raise SeriesNotUsable(f"too few slices ({len(headers)} < {min_slices})")
    if len(headers) > 1:
        positions = _positions_along_normal(headers, orientations[0])
        gaps = np.diff(np.sort(positions))
        if np.any(gaps < 1e-3):
            raise SeriesNotUsable("several slices share one position")
        median = float(np.median(gaps))
        if np.any(np.abs(gaps - median) > SPACING_TOLERANCE * median):
            raise SeriesNotUsable("slice spacing is not uniform (gaps or overlaps)")


def _distinct_rows(rows: np.ndarray) -> int:
    if np.allclose(rows, rows[0], atol=ORIENTATION_TOLERANCE):
        return 1  # the usual case, in one vectorised comparison
    distinct: list[np.ndarray] = []
    for row in rows:
        if not any(np.allclose(row, d, atol=ORIENTATION_TOLERANCE) for d in distinct):
            distinct.append(row)
    return len(distinct)


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def _positions_along_normal(headers: Sequence[Dataset], orientation: np.ndarray) -> np.ndarray:
    normal = _normal(orientation)
    return np.asarray([float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in headers])


def check_usable(headers: Sequence[Dataset]) -> None:
    """A series is usable when it forms one regular volume, or is one projection image (CR, DX)."""
    if len(headers) == 1 and "Rows" in headers[0] and "ImageOrientationPatient" not in headers[0] \
            and not is_multiframe(headers):
        return
    check_series(headers)


@dataclass(frozen=True)
class Image:
    """One 2D image: pixel values after the Modality LUT (rescale), float32 ``(rows, columns)``."""

    array: np.ndarray
    dataset: Dataset

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        return (self.dataset,)


def build_image(datasets: Sequence[Dataset]) -> Image:
    """The single image of a 2D series (a radiograph), with the Modality LUT applied."""
    if len(datasets) != 1:
        raise SeriesNotUsable(f"a 2D model takes a single-image series (this one has {len(datasets)} images)")
    (ds,) = datasets
    if "Rows" not in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise SeriesNotUsable("not a single-frame image")
    try:
        pixels = ds.pixel_array
        values = apply_modality_lut(pixels, ds)
    except Exception as exc:  # decoders raise many types
        raise SeriesNotUsable(f"pixel data could not be decoded: {type(exc).__name__}: {exc}") from exc
    if pixels.ndim != 2:
        raise SeriesNotUsable(f"expected one grey-scale frame, got shape {pixels.shape}")
    return Image(array=np.asarray(values, dtype=np.float32), dataset=ds)


def build_volume(datasets: Sequence[Dataset], min_slices: int = 1) -> Volume:
    """Sort ``datasets`` (or a multi-frame image's frames) along the slice normal into a :class:`Volume`."""
    check_series(datasets, min_slices)
    if is_multiframe(datasets):
        return _multiframe_volume(datasets[0])
    orientation = _orientation(datasets[0])
    positions = _positions_along_normal(datasets, orientation)
    order = np.argsort(positions)
    ordered = tuple(datasets[i] for i in order)
    array = np.empty((len(ordered), int(ordered[0].Rows), int(ordered[0].Columns)), dtype=np.float32)
    try:
        for out, ds in zip(array, ordered, strict=True):
            _rescale_into(ds, out)
    except Exception as exc:  # decoders raise many types; the series is unusable either way
        raise SeriesNotUsable(f"pixel data could not be decoded: {type(exc).__name__}: {exc}") from exc
    return Volume(array=array, affine=_affine(ordered, orientation), datasets=ordered)


def _multiframe_volume(ds: Dataset) -> Volume:
    positions, orientation, (row_spacing, col_spacing) = geometry(ds)
    order = np.argsort(positions @ _normal(orientation))
    try:
        frames = rescaled_frames(ds)
    except SeriesNotUsable:
        raise
    except Exception as exc:  # decoders raise many types
        raise SeriesNotUsable(f"pixel data could not be decoded: {type(exc).__name__}: {exc}") from exc
    affine = np.eye(4)
    affine[:3, 0] = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    affine[:3, 1] = orientation[3:] * row_spacing
    affine[:3, 2] = orientation[:3] * col_spacing
    affine[:3, 3] = positions[order[0]]
    return Volume(array=frames[order], affine=affine, datasets=(ds,), frame_order=tuple(int(i) for i in order))


# Little-endian native encodings: their Pixel Data is the frame itself, row by row (PS3.5 8.1.1)
NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})


def native_pixels(ds: Dataset) -> np.ndarray | None:
    """The one grey-scale frame of ``ds`` read straight from its Pixel Data, or None where that is not plain.

    Plain: a little-endian native transfer syntax, one sample of 8, 16 or 32 bits allocated, one frame.
    The result equals ``ds.pixel_array`` (unused high bits cleared, or the sign extended from Bits Stored,
    as pydicom does) without its per-call set-up, which took a third of loading a 189-slice series.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        stored = int(ds.get("BitsStored", bits) or bits)
        plain = (syntax in NATIVE_LITTLE_ENDIAN and int(ds.get("SamplesPerPixel", 1)) == 1 and bits in (8, 16, 32)
                 and 0 < stored <= bits and int(ds.get("NumberOfFrames", 1) or 1) == 1 and "PixelData" in ds)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
    except (AttributeError, TypeError, ValueError):
        return None
    data = ds.PixelData if plain else None
    if not isinstance(data, bytes) or len(data) < rows * columns * bits // 8:
        return None
    pixels = np.frombuffer(data, dtype=f"<{'i' if signed else 'u'}{bits // 8}", count=rows * columns)
    pixels = pixels.reshape(rows, columns)
    unused = bits - stored
    if unused and signed:
        return (pixels << unused) >> unused  # type: ignore[no-any-return]
    if unused:
        return pixels & pixels.dtype.type(2**stored - 1)  # type: ignore[no-any-return]
    return pixels


def _rescale_into(ds: Dataset, out: np.ndarray) -> None:
    """``out`` (float32, one slice of the volume) = stored values * RescaleSlope + RescaleIntercept."""
    native = native_pixels(ds)
    pixels = native if native is not None else ds.pixel_array
    if pixels.ndim != 2:
        raise SeriesNotUsable(f"expected one grey-scale frame per instance, got shape {pixels.shape}")
    out[...] = pixels  # one pass, no intermediate copies (a 189-slice series is 50 MB of float32)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1:
        out *= np.float32(slope)
    if intercept != 0:
        out += np.float32(intercept)


def _affine(ordered: Sequence[Dataset], orientation: np.ndarray) -> np.ndarray:
    row_cos, col_cos = orientation[:3], orientation[3:]
    row_spacing, col_spacing = (float(v) for v in ordered[0].PixelSpacing)
    first = np.asarray([float(v) for v in ordered[0].ImagePositionPatient])
    if len(ordered) > 1:
        last = np.asarray([float(v) for v in ordered[-1].ImagePositionPatient])
        slice_step = (last - first) / (len(ordered) - 1)
    else:
        thickness = float(ordered[0].get("SliceThickness", 1) or 1)
        slice_step = _normal(orientation) * thickness
    affine = np.eye(4)
    affine[:3, 0] = slice_step
    affine[:3, 1] = col_cos * row_spacing  # down the rows
    affine[:3, 2] = row_cos * col_spacing  # along a row
    affine[:3, 3] = first
    return affine


@dataclass(frozen=True)
class Reorientation:
    """How to bring an array with ``affine`` (LPS) into the RAS+ axis order that nibabel calls canonical."""

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.axes)
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(out)

    def invert(self, array: np.ndarray) -> np.ndarray:
        out = array
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.axes)))


def ras_reorientation(affine: np.ndarray) -> Reorientation:
    """The axis permutation and flips taking an LPS-affine array to closest-canonical RAS+ order."""
    return canonical_reorientation(affine, "RAS")


def canonical_reorientation(affine: np.ndarray, system: str) -> Reorientation:
    """The axis permutation and flips taking an LPS-affine array to closest-canonical ``system`` order.

    ``system`` is ``"RAS"`` (nibabel's canonical: array axes along R, A, S) or ``"LPS"`` (along L, P, S).
    """
    signs = np.diag([-1.0, -1.0, 1.0]) if system == "RAS" else np.eye(3)
    oriented = signs @ affine[:3, :3]
    unit = oriented / np.linalg.norm(oriented, axis=0)
    axes: list[int] = []
    flips: list[bool] = []
    for world in range(3):
        candidates = [a for a in range(3) if a not in axes]
        best = max(candidates, key=lambda a: abs(unit[world, a]))
        axes.append(best)
        flips.append(bool(unit[world, best] < 0))
    return Reorientation(axes=(axes[0], axes[1], axes[2]), flips=(flips[0], flips[1], flips[2]))
