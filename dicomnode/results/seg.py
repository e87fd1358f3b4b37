"""Model output + source series -> highdicom Segmentations in the source study.

A BINARY SEG carries a segmentation model's label map, each segment with its label and colour. A classifier's
occlusion-sensitivity map is a BINARY SEG too, one segment per positive class: the region where the evidence
is at least half its maximum. (A FRACTIONAL SEG would keep the grading, but OHIF 3.13 does not display one:
"Fractional segmentations are not yet supported"; the graded map goes to the SC overlay, explanation = "sc".)
A SEG of a projection image (DX, CR: no frame of reference) carries a plane orientation and position per
frame, without which OHIF cannot place it on the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code

from dicomnode.errors import BuildError
from dicomnode.inference.manifest import ClassSpec, LabelSpec, Manifest
from dicomnode.results.equipment import ResultIdentity, algorithm_identification, equipment
from dicomnode.results.files import EVIDENCE
from dicomnode.results.sr import concept

EXPLANATION_SERIES_OFFSET = 300  # SEG at base + n, SR at base + 100 + n, notice + 200, explanation + 300
CLINICAL_FINDING = Code("404684003", "SCT", "Clinical finding")
EVIDENCE_LEVEL = 0.5  # of the map's maximum: the evidence region of a classifier's explanation
EVIDENCE_COLOUR = (255, 210, 0)  # yellow, distinct from the segment colours of the shipped models
PROJECTION_ORIENTATION = [1, 0, 0, 0, 1, 0]  # rows left to right, columns top to bottom: as viewers draw a DX


def _description(label: LabelSpec, manifest: Manifest) -> hd.seg.SegmentDescription:
    colour = hd.color.CIELabColor.from_rgb(*label.colour) if label.colour else None
    return hd.seg.SegmentDescription(
        segment_number=label.number,
        segment_label=label.label,
        segmented_property_category=concept(label.category),
        segmented_property_type=concept(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(manifest),
        display_color=colour,
    )


def segment_descriptions(manifest: Manifest) -> list[hd.seg.SegmentDescription]:
    return [_description(label, manifest) for label in manifest.labels]


def _projection_fix(seg: Dataset, sources: Sequence[Dataset]) -> None:
    """A SEG of a projection image (no frame of reference) needs the source's PatientOrientation (Type 2C),
    and, for OHIF to load it, a plane orientation and pixel spacing (shared) and position (per frame): the
    source's where it has them, else the image plane as drawn."""
    if "FrameOfReferenceUID" in seg:
        return
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(sources[0].get("ImageOrientationPatient") or PROJECTION_ORIENTATION)
    shared = seg.SharedFunctionalGroupsSequence[0]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    if "PixelMeasuresSequence" not in shared:  # OHIF's SEG viewport reads it (and fails without it)
        measures = Dataset()
        measures.PixelSpacing = list(sources[0].get("PixelSpacing") or sources[0].get("ImagerPixelSpacing")
                                     or [1, 1])
        shared.PixelMeasuresSequence = DicomSequence([measures])
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = Dataset()
        position.ImagePositionPatient = list(sources[0].get("ImagePositionPatient") or [0, 0, 0])
        frame.PlanePositionSequence = DicomSequence([position])


def _common(manifest: Manifest) -> dict[str, object]:
    return {**equipment(manifest), "instance_number": 1}


def build_seg(
    sources: Sequence[Dataset], labels: np.ndarray, manifest: Manifest, identity: ResultIdentity
) -> hd.seg.Segmentation:
    """A BINARY SEG with one frame per non-empty source slice.

    ``sources`` are the sanitised source headers in slice order (or one multi-frame image) and ``labels``
    the label map ``(slice or frame, row, column)`` on that grid, with the manifest's label numbers.
    """
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in sources)
    if labels.shape[0] != frames:
        raise BuildError(f"label map has {labels.shape[0]} slices for {frames} source frames")
    if not np.any(labels):
        raise BuildError("the model found nothing to segment")
    try:
        seg = hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=labels.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(manifest),
            series_instance_uid=identity.seg_series_uid,
            series_number=identity.seg_series_number,
            sop_instance_uid=identity.seg_sop_uid,
            series_description=f"AI {manifest.labels[0].label} SEG ({manifest.id})"[:64],
            content_label="AI_SEG",
            content_description=f"{manifest.name} {manifest.version}"[:64],
            **_common(manifest),  # type: ignore[arg-type]
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise BuildError(f"SEG could not be built: {exc}") from exc
    _projection_fix(seg, sources)
    return seg


def evidence_region(heat: np.ndarray) -> np.ndarray:
    """Where ``heat`` (in [0, 1]) is at least :data:`EVIDENCE_LEVEL` of its maximum; empty where it is all 0."""
    peak = float(heat.max()) if heat.size else 0.0
    return np.asarray(heat >= EVIDENCE_LEVEL * peak, dtype=bool) if peak > 0 else np.zeros(heat.shape, bool)


def build_explanation_seg(
    sources: Sequence[Dataset], maps: dict[ClassSpec, np.ndarray], manifest: Manifest, identity: ResultIdentity
) -> hd.seg.Segmentation:
    """A BINARY SEG: one segment per positive class, the region where its occlusion map is at least half its
    maximum ("<label> evidence"), so that a viewer without fractional SEG support (OHIF 3.13) shows it."""
    specs = list(maps)
    # (slices, rows, columns, segments)
    stacked = np.stack([evidence_region(maps[s]) for s in specs], axis=-1).astype(np.uint8)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i,
        segment_label=f"{spec.label} evidence"[:64],
        segmented_property_category=CLINICAL_FINDING,
        segmented_property_type=concept(spec.finding),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(manifest),
        display_color=hd.color.CIELabColor.from_rgb(*EVIDENCE_COLOUR),
    ) for i, spec in enumerate(specs, start=1)]
    try:
        seg = hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=stacked,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=identity.uid("explanation-seg-series"),
            series_number=identity.series_number(EXPLANATION_SERIES_OFFSET),
            sop_instance_uid=identity.uid("explanation-seg-instance"),
            series_description=f"AI evidence map ({manifest.id})"[:64],
            content_label=EVIDENCE,
            content_description=f"occlusion sensitivity >= {EVIDENCE_LEVEL:g} of maximum"[:64],
            **_common(manifest),  # type: ignore[arg-type]
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise BuildError(f"explanation SEG could not be built: {exc}") from exc
    _projection_fix(seg, sources)
    return seg
