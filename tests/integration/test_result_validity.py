"""Every kind of object the node writes, built from synthetic data, passes both validators.

dciodvfy (dicom3tools) checks the IODs; PixelMed's DicomSRValidator checks the SR templates and their
context groups (TID 1500 row 4 takes its code from CID 100). These run without ../shared/data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.inference.manifest import CodeSpec, FindingSpec
from dicomnode.inference.postprocess import components, segment_finding
from dicomnode.inference.registry import Manifest, load_manifests
from dicomnode.inference.volume import Volume, build_volume
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.notice import build_failure_notice
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from tests.support.peers import REPO, dciodvfy, sr_validator
from tests.support.synthetic import make_radiograph, make_series


def _seg_and_sr(manifest: Manifest) -> tuple[Volume, np.ndarray, list[Dataset], ResultIdentity, Dataset, Dataset]:
    """The SEG and TID 1500 SR of a box-shaped label in one synthetic MR series, as the node builds them."""
    series = make_series(n_slices=10, rows=16, columns=12)
    volume = build_volume(series)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:7, 4:10, 3:9] = 1
    sources = sanitise_headers(volume.datasets)
    identity = ResultIdentity.for_job(str(series[0].SeriesInstanceUID), 7, manifest)
    seg = build_seg(sources, labels, manifest, identity)
    sr = build_sr(seg, sources, segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest), manifest, identity)
    return volume, labels, sources, identity, seg, sr


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SEG, TID 1500 SR and failure notice for one synthetic MR series, written as the node writes them."""
    manifest: Manifest = load_manifests(REPO / "models")["deepbet"]
    volume, labels, sources, identity, seg, sr = _seg_and_sr(manifest)
    notice = build_failure_notice(sources, manifest, "model output was empty", 7)
    finding, absent = _finding_srs(manifest, volume, labels, seg, sources, identity)
    folder = tmp_path_factory.mktemp("written")
    paths = {}
    for name, obj in (("seg", seg), ("sr", sr), ("notice", notice), ("finding_sr", finding), ("absent_sr", absent)):
        paths[name] = folder / f"{name}.dcm"
        obj.save_as(paths[name])
    return paths


def _finding_srs(manifest: Manifest, volume: Volume, labels: np.ndarray, seg: Dataset, sources: list[Dataset],
                 identity: ResultIdentity) -> tuple[Dataset, Dataset]:
    """The same segmenter with ``[output.finding]``: the SR with two components (Present), and with none (Absent)."""
    spec = FindingSpec(label=1, name="Brain present", code=CodeSpec(scheme="SCT", value="12738006", meaning="Brain"))
    declared = manifest.model_copy(update={"output": manifest.output.model_copy(update={"finding": spec})})
    two = labels.copy()
    two[8:10, 0:3, 0:3] = 1
    kept, parts = components(two, two[None] * 0.75, declared, volume.voxel_volume_mm3)
    volumes = segment_volumes_ml(kept, volume.voxel_volume_mm3, declared)
    present = build_sr(seg, sources, volumes, declared, identity, parts, segment_finding(parts, spec))
    absent = build_sr(None, sources, volumes, declared, identity, (), segment_finding((), spec))
    assert len(parts) == 2
    return present, absent


@pytest.mark.parametrize("kind", ["seg", "sr", "notice", "finding_sr", "absent_sr"])
def test_dciodvfy_finds_no_error(written: dict[str, Path], kind: str) -> None:
    errors, _ = dciodvfy(written[kind])
    assert errors == [], f"{kind}: {errors}"


@pytest.mark.parametrize("kind", ["sr", "notice", "finding_sr", "absent_sr"])
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


def test_every_object_carries_the_intended_use(written: dict[str, Path]) -> None:
    """The manifest's intended use (for the demonstration models: "... not for clinical use") in full."""
    intended = load_manifests(REPO / "models")["deepbet"].intended_use
    seg = dcmread(written["seg"])
    parameters = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert intended in parameters
    for kind in ("sr", "notice", "finding_sr", "absent_sr"):
        texts = [str(e.value) for e in dcmread(written[kind]).iterall() if e.VR in ("LT", "ST", "UT")]
        assert any(intended in text for text in texts), kind


def _content_items(ds: Dataset) -> list[Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_content_items(item))
    return out


def test_a_long_model_name_is_cut_to_64_characters_and_stays_valid(tmp_path: Path) -> None:
    """LO values hold 64 characters: a model named at length still gives objects with no dciodvfy error."""
    name = "Research brain extraction network trained on synthetic phantoms, long-form name"
    manifest = load_manifests(REPO / "models")["deepbet"].model_copy(update={"name": name})
    *_, seg, sr = _seg_and_sr(manifest)
    assert seg.ContentDescription == f"{name} {manifest.version}"[:64]
    algorithm_names = {item.TextValue for item in _content_items(sr)
                       if item.ConceptNameCodeSequence[0].CodeValue == "111001"}  # Algorithm Name (DCM)
    assert algorithm_names == {name[:64]}
    for kind, obj in (("seg", seg), ("sr", sr)):
        path = tmp_path / f"{kind}.dcm"
        obj.save_as(path)
        errors, _ = dciodvfy(path)
        assert errors == [], f"{kind}: {errors}"


def test_seg_of_a_radiograph_carries_its_patient_orientation(tmp_path: Path) -> None:
    """A projection image has no frame of reference: its SEG then needs the source's PatientOrientation
    (Type 2C), and dciodvfy finds no error."""
    manifest = load_manifests(REPO / "models")["deepbet"]
    source = make_radiograph(np.full((32, 32), 1000, np.uint16))
    labels = np.zeros((1, 32, 32), np.uint8)
    labels[0, 8:20, 8:20] = 1
    identity = ResultIdentity.for_job(str(source.SeriesInstanceUID), 1, manifest)
    seg = build_seg(sanitise_headers([source]), labels, manifest, identity)
    assert "FrameOfReferenceUID" not in seg and list(seg.PatientOrientation) == ["L", "F"]
    seg.save_as(tmp_path / "seg.dcm")
    assert dciodvfy(tmp_path / "seg.dcm")[0] == []
