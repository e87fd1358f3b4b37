"""Model output + source series -> a binary highdicom Segmentation in the source study."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicomnode.errors import BuildError
from dicomnode.inference.registry import LabelSpec, Manifest
from dicomnode.results.equipment import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    MANUFACTURER_MODEL_NAME,
    ResultIdentity,
    algorithm_identification,
    software_versions,
)


def _code(spec: LabelSpec) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    return (hd.sr.CodedConcept(spec.category.value, spec.category.scheme, spec.category.meaning),
            hd.sr.CodedConcept(spec.type.value, spec.type.scheme, spec.type.meaning))


def segment_descriptions(manifest: Manifest) -> list[hd.seg.SegmentDescription]:
    descriptions = []
    for label in manifest.labels:
        category, prop = _code(label)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=label.number,
            segment_label=label.label,
            segmented_property_category=category,
            segmented_property_type=prop,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_identification(manifest),
        ))
    return descriptions


def build_seg(
    sources: Sequence[Dataset], labels: np.ndarray, manifest: Manifest, identity: ResultIdentity
) -> hd.seg.Segmentation:
    """A BINARY SEG with one frame per non-empty source slice.

    ``sources`` are the sanitised source headers in slice order and ``labels`` the label map
    ``(slice, row, column)`` on that grid, with the values of the manifest's label numbers.
    """
    if labels.shape[0] != len(sources):
        raise BuildError(f"label map has {labels.shape[0]} slices for {len(sources)} source images")
    if not np.any(labels):
        raise BuildError("the model found nothing to segment")
    try:
        return hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=labels.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(manifest),
            series_instance_uid=identity.seg_series_uid,
            series_number=identity.seg_series_number,
            sop_instance_uid=identity.seg_sop_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER_MODEL_NAME,
            software_versions=software_versions(manifest),
            device_serial_number=DEVICE_SERIAL_NUMBER,
            series_description=f"AI {manifest.labels[0].label} SEG ({manifest.id})"[:64],
            content_label="AI_SEG",
            content_description=f"{manifest.name} {manifest.version}"[:64],
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise BuildError(f"SEG could not be built: {exc}") from exc
