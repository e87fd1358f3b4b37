"""Every kind of object the node writes, built from synthetic data, passes both validators.

dciodvfy (dicom3tools) checks the IODs; PixelMed's DicomSRValidator checks the SR templates and their
context groups (TID 1500 row 4 takes its code from CID 100). These run without ../shared/data. Every
measurement group carries what OHIF's SR reader needs to draw it (tests/e2e/test_viewer.py opens them there):
an image region at its top level, the first numeric measurement inferred from the same point, a Comment label.
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
from dicomnode.inference.result import ClassificationResult, ClassProbability
from dicomnode.inference.volume import Volume
from dicomnode.results.classification import build_classification_sr
from dicomnode.results.equipment import DEVICE_SERIAL_NUMBER, MANUFACTURER, MANUFACTURER_MODEL_NAME, ResultIdentity
from dicomnode.results.notice import build_failure_notice
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_explanation_seg, build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from tests.support.peers import REPO, dciodvfy, sr_validator
from tests.support.results import box_seg
from tests.support.synthetic import make_radiograph


def _seg_and_sr(manifest: Manifest) -> tuple[Volume, np.ndarray, list[Dataset], ResultIdentity, Dataset, Dataset]:
    """The SEG and TID 1500 SR of a box-shaped label in one synthetic MR series, as the node builds them."""
    box = box_seg(manifest)
    sr = build_sr(box.seg, box.sources, box.volumes, manifest, box.identity)
    return box.volume, box.labels, box.sources, box.identity, box.seg, sr


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SEG, TID 1500 SR and failure notice for one synthetic MR series, written as the node writes them."""
    manifest: Manifest = load_manifests(REPO / "models")["deepbet"]
    volume, labels, sources, identity, seg, sr = _seg_and_sr(manifest)
    notice = build_failure_notice(sources, manifest, "model output was empty", 7, 1)
    finding, absent = _finding_srs(manifest, volume, labels, seg, sources, identity)
    evidence_seg, classification_sr = _classification()
    folder = tmp_path_factory.mktemp("written")
    paths = {}
    for name, obj in (("seg", seg), ("sr", sr), ("notice", notice), ("finding_sr", finding), ("absent_sr", absent),
                      ("evidence_seg", evidence_seg), ("classification_sr", classification_sr)):
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


def _classification() -> tuple[Dataset, Dataset]:
    """The radiograph demo's evidence SEG (binary) and classification SR, for a DX image with a map peaking at
    row 20, column 12."""
    manifest: Manifest = load_manifests(REPO / "models")["cxr-demo"]
    (spec,) = manifest.output.classes
    source = sanitise_headers([make_radiograph(np.full((32, 32), 1000, np.uint16))])
    heat = np.zeros((1, 32, 32), np.float32)
    heat[0, 16:25, 8:17] = 0.6
    heat[0, 20, 12] = 0.9
    identity = ResultIdentity.for_job(str(source[0].SeriesInstanceUID), 1, manifest)
    seg = build_explanation_seg(source, {spec: heat}, manifest, identity)
    result = ClassificationResult(classes=(ClassProbability(spec, 0.88),), explanations={spec.index: heat})
    return seg, build_classification_sr(source, result, manifest, identity, [seg], {spec.index: heat})


SRS = ["sr", "finding_sr", "absent_sr", "classification_sr"]


@pytest.mark.parametrize("kind", ["seg", "sr", "notice", "finding_sr", "absent_sr", "evidence_seg",
                                  "classification_sr"])
def test_dciodvfy_finds_no_error(written: dict[str, Path], kind: str) -> None:
    errors, _ = dciodvfy(written[kind])
    assert errors == [], f"{kind}: {errors}"


@pytest.mark.parametrize("kind", ["sr", "notice", "finding_sr", "absent_sr", "classification_sr"])
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



def test_every_object_names_the_node_as_its_equipment(written: dict[str, Path]) -> None:
    """General Equipment: a reader of any object the node writes can tell that this node made it."""
    for kind, path in written.items():
        ds = dcmread(path, stop_before_pixels=True)
        assert (ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber) == (
            MANUFACTURER, MANUFACTURER_MODEL_NAME, DEVICE_SERIAL_NUMBER), kind
        assert ds.SoftwareVersions, kind


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


def _groups(sr: Dataset) -> list[Dataset]:
    (measurements,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return list(measurements.ContentSequence)


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


@pytest.mark.parametrize("kind", SRS)
def test_every_group_is_drawn_as_ohif_draws_it(written: dict[str, Path], kind: str) -> None:
    """Per group: an Image Region (SCOORD POINT) at its top level on a source image, the first NUM inferred
    from the same point, and a Comment that ends with the intended use."""
    sr = dcmread(written[kind])
    sources = {str(ref.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
               for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    for group in _groups(sr):
        (region,) = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
        assert _code(region) == "111030" and region.GraphicType == "POINT"  # Image Region
        assert str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) in sources
        first = next(i for i in group.ContentSequence if i.ValueType == "NUM")
        (inferred,) = [i for i in first.ContentSequence if i.ValueType == "SCOORD"]
        assert inferred.RelationshipType == "INFERRED FROM"
        assert list(inferred.GraphicData) == list(region.GraphicData)
        (label,) = [i for i in group.ContentSequence if _code(i) == "121106"]  # Comment
        assert label.ValueType == "TEXT" and label.TextValue.endswith(")")


def test_labels_give_the_values(written: dict[str, Path]) -> None:
    """The label OHIF shows carries the value: the volume in ml, the finding and its probability."""
    (group,) = _groups(dcmread(written["sr"]))
    (label,) = [i.TextValue for i in group.ContentSequence if _code(i) == "121106"]
    assert label == "Brain: 0.3 ml (research use only, not for diagnostic use)"  # 5 x 6 x 6 voxels of 1.44 mm3
    (group,) = _groups(dcmread(written["classification_sr"]))
    (label,) = [i.TextValue for i in group.ContentSequence if _code(i) == "121106"]
    assert label == ("Opacity (synthetic-phantom demo; not clinical) present, p = 0.88 "
                     "(research demonstration; not for clinical use)")
    (region,) = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
    assert list(region.GraphicData) == [12.5, 20.5]  # the map's peak (column 12, row 20), at the pixel's centre


def test_volume_group_points_into_the_segment_on_its_fullest_slice(written: dict[str, Path]) -> None:
    """The volume's point lies inside the segment on a slice where it is fullest, and names the SEG segment."""
    sr, seg = dcmread(written["sr"]), dcmread(written["seg"])
    (group,) = _groups(sr)
    (region,) = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
    column, row = region.GraphicData
    assert 3 <= column < 9 and 4 <= row < 10  # labels[2:7, 4:10, 3:9]
    (source,) = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert source.ReferencedSOPSequence[0].ReferencedSegmentNumber == 1


def test_evidence_seg_is_binary_and_placed_on_the_radiograph(written: dict[str, Path]) -> None:
    """OHIF 3.13 displays no FRACTIONAL SEG: the evidence is the region at half the map's maximum or more, and
    each frame of a radiograph's SEG carries a plane orientation, pixel spacing and position (OHIF cannot place
    it without)."""
    seg = dcmread(written["evidence_seg"])
    assert seg.SegmentationType == "BINARY"
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PlaneOrientationSequence" in shared and "PixelMeasuresSequence" in shared
    assert all("PlanePositionSequence" in frame for frame in seg.PerFrameFunctionalGroupsSequence)
    mask = seg.pixel_array
    assert mask.sum() == 9 * 9 and mask[16:25, 8:17].all()  # 0.6 and 0.9 are >= 0.45: the whole patch


def test_notice_says_why_in_its_series_description(written: dict[str, Path]) -> None:
    """The worklist and OHIF's study browser show the series description: it carries the reason."""
    notice = dcmread(written["notice"])
    assert notice.SeriesDescription == "AI result not available (deepbet): model output was empty"
