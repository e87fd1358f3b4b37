"""Details of what the inference and results layers promise: a radiograph's values as float32 and the clear
error a colour image gets, a signed MONOCHROME1 image inverted within its stored range, occlusion patches
that stay inside the image, the finding label a radiologist reads, deterministic Tracking UIDs and the
algorithm name in every group of the SR, longitudinal groups included."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.errors import SeriesNotUsable
from dicomnode.inference.explain import occlusion_maps
from dicomnode.inference.intensity import display_values
from dicomnode.inference.manifest import CodeSpec, Explanation, FindingSpec, Intensity
from dicomnode.inference.postprocess import components, label_map, segment_finding
from dicomnode.inference.registry import Manifest, load_manifests
from dicomnode.inference.result import ClassificationResult, ClassProbability
from dicomnode.inference.volume import build_image, build_volume
from dicomnode.results import longitudinal
from dicomnode.results.classification import build_classification_sr
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from tests.support.peers import REPO
from tests.support.results import box_seg
from tests.support.synthetic import make_radiograph, make_series

TRACKING_UID = "112040"
COMMENT = "121106"
ALGORITHM_NAME = "111001"
TIME_POINT = "C2348792"
DEMO_OPACITY = "Opacity (synthetic-phantom demo; not clinical)"


def _manifest(model_id: str) -> Manifest:
    return load_manifests(REPO / "models")[model_id]


def _walk(items: Sequence[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def _groups(sr: Dataset) -> list[Dataset]:
    (measurements,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return list(measurements.ContentSequence)


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _tracking_uids(sr: Dataset) -> list[str]:
    return [str(i.UID) for group in _groups(sr) for i in group.ContentSequence if _code(i) == TRACKING_UID]


def _label(group: Dataset) -> str:
    return str(next(i.TextValue for i in group.ContentSequence if _code(i) == COMMENT))


# ---------------------------------------------------------------------------------------------- inference


def test_a_radiograph_is_built_as_float32_rescaled_values() -> None:
    """build_image gives the Modality-LUT values of a radiograph as a float32 array."""
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 50
    ds = make_radiograph(pixels)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-10"
    image = build_image([ds])
    assert image.array.dtype == np.float32
    assert np.array_equal(image.array, pixels.astype(np.float32) * 2 - 10)


def test_a_colour_radiograph_is_refused_with_the_shape_it_has() -> None:
    """A colour (RGB) single-frame image raises SeriesNotUsable saying it expected one grey-scale frame."""
    ds = make_radiograph(np.zeros((8, 6), np.uint16))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.arange(8 * 6 * 3, dtype=np.uint8).tobytes()
    with pytest.raises(SeriesNotUsable, match=r"^expected one grey-scale frame, got shape \(8, 6, 3\)$"):
        build_image([ds])


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_a_signed_monochrome1_image_is_inverted_within_its_stored_range(bits_stored: int) -> None:
    """A signed MONOCHROME1 image is inverted within its stored range [-2**(b-1), 2**(b-1) - 1]: v -> -1 - v."""
    ds = make_radiograph(np.zeros((4, 4), np.uint16), monochrome1=True, bits_stored=bits_stored)
    half = 2 ** (bits_stored - 1)
    stored = np.array([[-half, -1, 0, half - 1], [-100, 100, 7, -7], [1, 2, 3, 4], [-1000, 1000, 0, 0]], np.int16)
    ds.PixelRepresentation = 1
    ds.PixelData = stored.tobytes()
    image = build_image([ds])
    out = display_values(image.array, ds, Intensity(invert_monochrome1=True))
    assert np.array_equal(out, (-1 - stored).astype(np.float32))



@pytest.mark.parametrize("bits_stored", [10, 12, 16])
def test_an_unsigned_monochrome1_image_is_inverted_within_its_stored_range(bits_stored: int) -> None:
    """Unsigned, the stored range is [0, 2**b - 1]: v -> 2**b - 1 - v, whatever values the image holds (the
    image below stores 2**b - 1 - shown, so that it displays as ``shown``)."""
    top = 2**bits_stored - 1
    shown = np.array([[0, 1, 2, top], [top - 1, 100, 7, 0], [1, 2, 3, 4], [5, 6, 7, 8]], np.uint16)
    ds = make_radiograph(shown, monochrome1=True, bits_stored=bits_stored)
    assert int(np.frombuffer(ds.PixelData, np.uint16)[0]) == top
    image = build_image([ds])
    out = display_values(image.array, ds, Intensity(invert_monochrome1=True))
    assert np.array_equal(out, shown.astype(np.float32))

@pytest.mark.parametrize(("shape", "patch"), [((1, 5, 5), 8), ((1, 5, 9), 5), ((2, 6, 4), 4)])
def test_every_occlusion_patch_is_a_whole_patch_inside_the_image(shape: tuple[int, ...], patch: int) -> None:
    """Each occlusion fills a whole patch (cut to the image where the image is smaller) and stays inside it."""
    rng = np.random.default_rng(1500)
    x = rng.normal(size=shape).astype(np.float32)
    seen: list[np.ndarray] = []

    def probabilities(occluded: np.ndarray) -> np.ndarray:
        seen.append(np.any(occluded != x, axis=0))
        return np.array([float(occluded.mean())])

    maps = occlusion_maps(x, [0], Explanation(patch=patch, stride=1), probabilities)
    assert maps[0].shape == shape[1:]
    baseline, *occlusions = seen
    assert not baseline.any()
    window = [min(patch, s) for s in shape[1:]]
    corners = [(s - w + 1) for s, w in zip(shape[1:], window, strict=True)]
    assert len(occlusions) == int(np.prod(corners))  # stride 1: every position where a whole patch fits, once
    for covered in occlusions:
        rows, columns = np.nonzero(covered)
        assert (rows.max() - rows.min() + 1, columns.max() - columns.min() + 1) == tuple(window)
        assert int(covered.sum()) == int(np.prod(window))


def test_an_occlusion_map_is_the_mean_drop_over_the_patches_covering_each_pixel() -> None:
    """The class depends on one pixel only: each pixel's value is the share of the patches over it that hid
    that pixel (2 x 2 patches, stride 1, on 4 x 4: 1, 1, 1/2 and 0 along each axis), peak 1."""
    x = np.zeros((1, 4, 4), np.float32)
    x[0, 1, 1] = 10.0
    maps = occlusion_maps(x, [0], Explanation(patch=2, stride=1), lambda seen: np.array([float(seen[0, 1, 1])]))
    share = np.array([1.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(maps[0], np.outer(share, share), atol=1e-6)


# ---------------------------------------------------------------------------------------------- results


def _classification_sr(probability: float, radiograph: Dataset | None = None) -> tuple[Dataset, ResultIdentity]:
    manifest = _manifest("cxr-demo")
    (spec,) = manifest.output.classes
    source = sanitise_headers([radiograph or make_radiograph(np.full((16, 16), 1000, np.uint16))])
    identity = ResultIdentity.for_job(str(source[0].SeriesInstanceUID), 1, manifest)
    result = ClassificationResult(classes=(ClassProbability(spec, probability),))
    return build_classification_sr(source, result, manifest, identity), identity


@pytest.mark.parametrize(("probability", "label"), [
    (0.88, f"{DEMO_OPACITY} present, p = 0.88 (research demonstration; not for clinical use)"),
    (0.12, f"{DEMO_OPACITY} absent, p = 0.12 (research demonstration; not for clinical use)"),
])
def test_the_classification_label_is_the_text_a_radiologist_reads(probability: float, label: str) -> None:
    """The finding's label reads '<finding> present|absent, p = 0.88 (<caveat>)', in lower case."""
    sr, _ = _classification_sr(probability)
    (group,) = _groups(sr)
    assert _label(group) == label


def test_the_probability_is_drawn_where_the_finding_is() -> None:
    """The probability measurement of a classification without an explanation map references the middle of
    the radiograph (an SCOORD POINT on it), as its finding does: a viewer draws it there."""
    sr, _ = _classification_sr(0.88)
    (group,) = _groups(sr)
    (number,) = [item for item in group.ContentSequence if item.ValueType == "NUM"]
    (point,) = [item for item in number.ContentSequence if item.ValueType == "SCOORD"]
    assert (point.RelationshipType, point.GraphicType, [float(v) for v in point.GraphicData]) == (
        "INFERRED FROM", "POINT", [8.0, 8.0])  # the centre of the 16 x 16 image, in pixels from its corner


def test_classification_tracking_uids_are_deterministic() -> None:
    """The classification SR's Tracking UID is the job's deterministic UID, the same on every build."""
    radiograph = make_radiograph(np.full((16, 16), 1000, np.uint16))
    first, identity = _classification_sr(0.88, radiograph)
    again, _ = _classification_sr(0.88, radiograph)
    assert _tracking_uids(first) == _tracking_uids(again) == [identity.uid("tracking", "0")]


def _segment_finding_sr(manifest: Manifest, series: list[Dataset]) -> tuple[Dataset, ResultIdentity]:
    spec = FindingSpec(label=1, name="Brain present", code=CodeSpec(scheme="SCT", value="12738006", meaning="Brain"))
    declared = manifest.model_copy(update={"output": manifest.output.model_copy(update={"finding": spec})})
    volume = build_volume(series)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:7, 4:10, 3:9] = 1
    kept, parts = components(labels, labels[None] * 0.75, declared, volume.voxel_volume_mm3)
    sources = sanitise_headers(volume.datasets)
    identity = ResultIdentity.for_job(str(series[0].SeriesInstanceUID), 7, declared)
    seg = build_seg(sources, kept, declared, identity)
    volumes = segment_volumes_ml(kept, volume.voxel_volume_mm3, declared)
    return build_sr(seg, sources, volumes, declared, identity, parts, segment_finding(parts, spec)), identity


def test_segment_finding_tracking_uids_are_deterministic_and_its_label_reads_present() -> None:
    """A segmenter's finding groups carry the job's deterministic Tracking UIDs and the label '<x> present, p = ..'."""
    manifest = _manifest("deepbet")
    series = make_series(n_slices=10, rows=16, columns=12)
    first, identity = _segment_finding_sr(manifest, series)
    again, _ = _segment_finding_sr(manifest, series)
    assert _tracking_uids(first) == [identity.uid("finding", "1"), identity.uid("component", "1")]
    assert _tracking_uids(again) == _tracking_uids(first)
    (finding, _) = _groups(first)
    assert _label(finding) == "Brain present, p = 0.75 (research use only, not for diagnostic use)"


def _longitudinal_sr(manifest: Manifest) -> tuple[Dataset, ResultIdentity, str]:
    """The SR with the prior's and change groups; the job's identity, the prior series' UID."""
    box = box_seg(manifest)
    seg, sources, volumes, identity = box.seg, box.sources, box.volumes, box.identity
    prior_series = make_series(n_slices=10, rows=16, columns=12)
    prior = longitudinal.PriorVolumes(
        study_uid=str(prior_series[0].StudyInstanceUID), series_uid=str(prior_series[0].SeriesInstanceUID),
        study_date=dt.date(2025, 1, 1), image=sanitise_headers([prior_series[5]])[0],
        volumes_ml={lab.number: 0.5 for lab in manifest.labels})
    comparison = longitudinal.Comparison(current_date=dt.date(2026, 1, 1), prior=prior)
    sr = build_sr(seg, sources, volumes, manifest, identity,
                  amend=lambda groups: longitudinal.amend(comparison, volumes, sources, manifest, identity, groups))
    return sr, identity, prior.series_uid


def test_every_group_names_the_algorithm_longitudinal_ones_included() -> None:
    """Every Algorithm Name in the SR, the prior and change groups' included, is the manifest's name."""
    manifest = _manifest("deepbet")
    sr, identity, prior_uid = _longitudinal_sr(manifest)
    groups = _groups(sr)
    timed = [g for g in groups if any(_code(i) == TIME_POINT for i in _walk(g.ContentSequence))]
    assert len(groups) == 3 and len(timed) == 2  # the report's own group, at the prior, change since the prior
    for group in groups:
        names = [str(i.TextValue) for i in _walk(group.ContentSequence) if _code(i) == ALGORITHM_NAME]
        assert names and set(names) == {manifest.name[:64]}
    # the prior's and the change's groups are tracked by the job's deterministic UIDs, as every other group
    label = str(manifest.labels[0].number)
    assert _tracking_uids(sr)[1:] == [identity.uid("prior", prior_uid, label), identity.uid("change", prior_uid, label)]
    # each says what it measured: the segment's type, as the report's own group does (TID 1501 Finding)
    finding = [[(str(i.ConceptCodeSequence[0].CodeValue), str(i.ConceptCodeSequence[0].CodingSchemeDesignator))
                for i in g.ContentSequence if _code(i) == "121071"] for g in groups]
    kind = manifest.labels[0].type
    assert finding == [[(kind.value, kind.scheme)]] * 3


def test_a_two_frame_image_is_not_a_radiograph() -> None:
    """A 2D model takes one frame: an image of two frames is refused, whatever its size."""
    ds = make_radiograph(np.zeros((8, 6), np.uint16))
    ds.NumberOfFrames = 2
    ds.PixelData = bytes(8 * 6 * 2 * 2)
    with pytest.raises(SeriesNotUsable, match=r"^not a single-frame image$"):
        build_image([ds])


def test_an_argmax_label_map_keeps_the_declared_labels_and_makes_the_rest_background() -> None:
    """models/README.md, `mode = "argmax"`: the label is the channel of the highest probability; a channel
    that is no declared label (here 2: only Brain, 1, is declared) is background."""
    manifest = _manifest("deepbet")
    argmax = manifest.model_copy(update={"output": manifest.output.model_copy(update={"mode": "argmax"})})
    winner = np.array([[0, 1], [2, 1]])
    probabilities = np.stack([(winner == c).astype(np.float32) * 0.8 + 0.1 for c in range(3)])
    labels = label_map(probabilities, argmax)
    assert labels.dtype == np.uint8 and labels.tolist() == [[0, 1], [0, 1]]


def test_a_segment_s_volume_is_drawn_at_the_segment_not_the_middle_of_the_series() -> None:
    """The box (slices 2-6, rows 4-9, columns 3-8 of a 10-slice 16 x 12 series): its volume is drawn at the
    box's centre, (column 6, row 7) in pixels, on one of its slices; the series' middle would be row 8."""
    manifest = _manifest("deepbet")
    box = box_seg(manifest)
    sr = build_sr(box.seg, box.sources, box.volumes, manifest, box.identity)
    (group,) = _groups(sr)
    (number,) = [item for item in group.ContentSequence if item.ValueType == "NUM"]
    (point,) = [item for item in number.ContentSequence if item.ValueType == "SCOORD"]
    assert (point.GraphicType, [float(v) for v in point.GraphicData]) == ("POINT", [6.0, 7.0])
    drawn_on = str(point.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    assert drawn_on in {str(ds.SOPInstanceUID) for ds in box.sources[2:7]}
