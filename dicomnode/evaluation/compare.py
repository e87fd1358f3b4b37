"""Two BINARY SEGs of the same source series -> Dice and volumes per segment (pure: datasets in, numbers out).

Frames are matched through the source image each one derives from (PS3.3 C.7.6.16.2.6, Derivation Image
Sequence), or, without it, through the frame's position (Plane Position Sequence); segments through
their Segmented Property Type code, else their number. Pixels are read leniently (pydicom unpacks the
1-bit frames): a reader's workstation writes what it writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class SegmentMasks:
    """One segment: its label, its property type (scheme, value), and a 2D mask per source frame key."""

    number: int
    label: str
    property_type: tuple[str, str]
    frames: dict[str, np.ndarray]

    @property
    def voxels(self) -> int:
        return int(sum(int(np.count_nonzero(m)) for m in self.frames.values()))


@dataclass(frozen=True)
class SegmentScore:
    segment_number: int
    label: str
    dice: float
    node_ml: float
    reference_ml: float

    @property
    def volume_difference_ml(self) -> float:
        """Reference minus node: positive when the reader segmented more."""
        return self.reference_ml - self.node_ml


def _frame_key(item: Dataset) -> str:
    """The source SOP Instance UID a frame derives from, else its position in mm (rounded)."""
    for derivation in item.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            uid = str(source.get("ReferencedSOPInstanceUID", ""))
            if uid:
                frame = source.get("ReferencedFrameNumber")
                return f"{uid}#{frame}" if frame else uid
    for position in item.get("PlanePositionSequence", []):
        return "pos:" + ",".join(f"{float(v):.2f}" for v in position.ImagePositionPatient)
    raise ValueError("a SEG frame names neither its source image nor its position")


def segment_masks(seg: Dataset) -> dict[int, SegmentMasks]:
    """The masks of each segment of a BINARY (or fractional, read as > 0.5) SEG, by segment number."""
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    fractional = str(seg.get("SegmentationType", "BINARY")) == "FRACTIONAL"
    scale = float(seg.get("MaximumFractionalValue", 255) or 255)
    info: dict[int, tuple[str, tuple[str, str]]] = {}
    for item in seg.SegmentSequence:
        code = item.SegmentedPropertyTypeCodeSequence[0]
        info[int(item.SegmentNumber)] = (str(item.get("SegmentLabel", "")),
                                         (str(code.CodingSchemeDesignator), str(code.CodeValue)))
    frames: dict[int, dict[str, np.ndarray]] = {n: {} for n in info}
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(identification[0].ReferencedSegmentNumber)  # per frame, or shared by a one-segment SEG
        mask = pixels[index] > (0.5 * scale if fractional else 0)
        key = _frame_key(item)
        previous = frames.setdefault(number, {}).get(key)
        frames[number][key] = mask if previous is None else (previous | mask)
    return {n: SegmentMasks(n, *info.get(n, ("", ("", ""))), frames=frames[n]) for n in frames}


def voxel_mm3(seg: Dataset) -> float:
    """Voxel volume from the shared Pixel Measures (PixelSpacing x SpacingBetweenSlices or SliceThickness)."""
    try:
        measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        row, column = (float(v) for v in measures.PixelSpacing)
        depth = measures.get("SpacingBetweenSlices") or measures.get("SliceThickness") or 1.0
        return row * column * float(depth)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return 0.0


def dice(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """2|A and B| / (|A| + |B|) over the union of frames; 1.0 when both are empty."""
    both = 0
    total = 0
    for key in a.keys() | b.keys():
        left, right = a.get(key), b.get(key)
        total += int(np.count_nonzero(left)) if left is not None else 0
        total += int(np.count_nonzero(right)) if right is not None else 0
        if left is not None and right is not None and left.shape == right.shape:
            both += int(np.count_nonzero(left & right))
    return 1.0 if total == 0 else 2.0 * both / total


def _partner(segment: SegmentMasks, node: dict[int, SegmentMasks]) -> SegmentMasks | None:
    same_type = [s for s in node.values() if s.property_type == segment.property_type]
    if len(same_type) == 1:
        return same_type[0]
    return node.get(segment.number)


def compare(node_seg: Dataset, reference_seg: Dataset) -> list[SegmentScore]:
    """A score for each segment of the node's SEG, against the reference segment that matches it.

    A node segment the reference lacks scores against an empty mask (Dice 0 when the node found
    something): the reader removed it.
    """
    node = segment_masks(node_seg)
    reference = segment_masks(reference_seg)
    node_mm3, reference_mm3 = voxel_mm3(node_seg), voxel_mm3(reference_seg) or voxel_mm3(node_seg)
    scores = []
    for segment in sorted(node.values(), key=lambda s: s.number):
        partner = next((r for r in reference.values() if _partner(r, node) is segment), None)
        frames = partner.frames if partner is not None else {}
        scores.append(SegmentScore(
            segment_number=segment.number, label=segment.label[:64], dice=dice(segment.frames, frames),
            node_ml=segment.voxels * node_mm3 / 1000.0,
            reference_ml=(partner.voxels if partner is not None else 0) * reference_mm3 / 1000.0))
    return scores
