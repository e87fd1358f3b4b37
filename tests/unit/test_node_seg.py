"""Which of a job's written SEGs is the node's segmentation (the one evaluation and training export read): a
BINARY SEG, never a classifier's evidence region (binary too, since OHIF 3.13 displays no fractional SEG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage, generate_uid

from dicomnode.results.files import EVIDENCE, job_folder, node_seg_path
from dicomnode.results.seg import evidence_region


def _seg(folder: Path, segmentation_type: str, content_label: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SegmentationStorage, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.Modality, ds.SegmentationType, ds.ContentLabel = "SEG", segmentation_type, content_label
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"seg-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_evidence_region_of_a_classifier_is_not_the_nodes_segmentation(tmp_path: Path) -> None:
    _seg(job_folder(tmp_path, 1), "BINARY", EVIDENCE)
    assert node_seg_path(tmp_path, 1) is None
    _seg(job_folder(tmp_path, 2), "FRACTIONAL", "AI_SEG")
    assert node_seg_path(tmp_path, 2) is None
    segmentation = _seg(job_folder(tmp_path, 3), "BINARY", "AI_SEG")
    _seg(job_folder(tmp_path, 3), "BINARY", EVIDENCE)
    assert node_seg_path(tmp_path, 3) == segmentation


def test_an_evidence_region_is_where_the_map_reaches_half_its_peak_and_empty_for_a_flat_map() -> None:
    """An occlusion map that never moved the class (all 0): an empty region of the map's shape, not an error."""
    heat = np.array([[[0.0, 0.2, 0.5], [0.49, 1.0, 0.6]]])
    assert evidence_region(heat).tolist() == [[[False, False, True], [False, True, True]]]
    flat = evidence_region(np.zeros((2, 3, 4)))
    assert flat.shape == (2, 3, 4) and flat.dtype == bool and not flat.any()
    assert evidence_region(np.zeros((0, 3))).shape == (0, 3)
