"""Every kind of object the node writes, built from synthetic data, passes both validators.

dciodvfy (dicom3tools) checks the IODs; PixelMed's DicomSRValidator checks the SR templates and their
context groups (TID 1500 row 4 takes its code from CID 100). These run without ../shared/data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicomnode.inference.registry import Manifest, load_manifests
from dicomnode.inference.volume import build_volume
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.notice import build_failure_notice
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from tests.support.peers import REPO, dciodvfy, sr_validator
from tests.support.synthetic import make_series


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SEG, TID 1500 SR and failure notice for one synthetic MR series, written as the node writes them."""
    manifest: Manifest = load_manifests(REPO / "models")["deepbet"]
    series = make_series(n_slices=10, rows=16, columns=12)
    volume = build_volume(series)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:7, 4:10, 3:9] = 1
    sources = sanitise_headers(volume.datasets)
    identity = ResultIdentity.for_job(str(series[0].SeriesInstanceUID), 7, manifest)
    seg = build_seg(sources, labels, manifest, identity)
    sr = build_sr(seg, sources, segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest), manifest, identity)
    notice = build_failure_notice(sources, manifest, "model output was empty", 7)
    folder = tmp_path_factory.mktemp("written")
    paths = {}
    for name, obj in (("seg", seg), ("sr", sr), ("notice", notice)):
        paths[name] = folder / f"{name}.dcm"
        obj.save_as(paths[name])
    return paths


@pytest.mark.parametrize("kind", ["seg", "sr", "notice"])
def test_dciodvfy_finds_no_error(written: dict[str, Path], kind: str) -> None:
    errors, _ = dciodvfy(written[kind])
    assert errors == [], f"{kind}: {errors}"


@pytest.mark.parametrize("kind", ["sr", "notice"])
def test_pixelmed_sr_validator_finds_no_error(written: dict[str, Path], kind: str) -> None:
    errors, warnings = sr_validator(written[kind])
    print(f"\n{kind}: {len(errors)} errors, {len(warnings)} warnings from DicomSRValidator")
    assert errors == [], f"{kind}: {errors}"


def test_procedure_reported_is_the_mr_procedure_of_cid_100(written: dict[str, Path]) -> None:
    sr = dcmread(written["sr"])
    (procedure,) = [item for item in sr.ContentSequence
                    if item.ConceptNameCodeSequence[0].CodeValue == "121058"]  # Procedure reported
    code = procedure.ConceptCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("25056-3", "LN")  # MRI unspecified body region
