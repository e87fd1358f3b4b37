"""SEG and SR built from real third-party series with dirty headers, validated by dciodvfy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicomnode.inference.registry import Manifest, load_manifests
from dicomnode.inference.volume import build_volume
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from tests.support.peers import REPO, dciodvfy, sr_validator


@pytest.fixture
def manifest() -> Manifest:
    return load_manifests(REPO / "models")["deepbet"]


@pytest.mark.parametrize("folder", ["mr_brainix_2series_uncompressed/Flair", "mr_knee_2series_j2k_lossy/T2"])
def test_dirty_headers_still_give_valid_objects(shared_data: Path, tmp_path: Path, manifest: Manifest,
                                               folder: str) -> None:
    """PatientSex "0000", NUL padding (Brainix, Knee): what the node writes is still valid."""
    datasets = [dcmread(p) for p in sorted((shared_data / folder).iterdir())]
    assert any(ds.get("PatientSex") == "0000" for ds in datasets)
    volume = build_volume(datasets)
    labels = (volume.array > np.percentile(volume.array, 70)).astype(np.uint8)
    sources = sanitise_headers(volume.datasets)
    identity = ResultIdentity.for_job(str(datasets[0].SeriesInstanceUID), int(datasets[0].SeriesNumber), manifest)
    seg = build_seg(sources, labels, manifest, identity)
    sr = build_sr(seg, sources, segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest), manifest, identity)
    for name, obj in (("seg", seg), ("sr", sr)):
        path = tmp_path / f"{name}.dcm"
        obj.save_as(path)
        errors, _ = dciodvfy(path)
        assert errors == [], f"{name}: {errors}"
    sr_errors, _ = sr_validator(tmp_path / "sr.dcm")
    assert sr_errors == [], sr_errors
    # the volume is drawn on a source image that holds the segment (where OHIF shows it)
    (measurements,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    (group,) = measurements.ContentSequence
    (region,) = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
    uid = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    (index,) = [k for k, ds in enumerate(volume.datasets) if ds.SOPInstanceUID == uid]
    column, row = region.GraphicData
    assert labels[index].any() and 0 <= column < labels.shape[2] and 0 <= row < labels.shape[1]
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.PatientID == datasets[0].PatientID.strip("\x00 ")

