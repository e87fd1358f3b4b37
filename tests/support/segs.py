"""A reader's SEG, as a workstation would write it: manual, another series and manufacturer, drawn on a
source series the node processed (highdicom, so that it is a valid SEG)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

NODULE = hd.sr.CodedConcept("27925004", "SCT", "Nodule")
ABNORMAL = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")


def reader_seg(sources: list[Dataset], mask: np.ndarray, *, series_description: str = "CORRECTED by reader",
               manufacturer: str = "Reader workstation", category: hd.sr.CodedConcept = ABNORMAL,
               property_type: hd.sr.CodedConcept = NODULE) -> Dataset:
    """A one-segment BINARY SEG of ``mask`` (slice, row, column) on ``sources`` (in that slice order)."""
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Reader corrected", segmented_property_category=category,
        segmented_property_type=property_type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=hd.UID(), series_number=77, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=manufacturer, manufacturer_model_name="viewer", software_versions="1",
        device_serial_number="1", series_description=series_description)
