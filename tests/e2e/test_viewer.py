"""What the radiologist sees: every kind of result, routed end to end through Orthanc, opened in OHIF Viewer.

One node (deepbet and the two demonstration models), one Orthanc with its DICOMweb plugin, one OHIF 3.13
(tests/support/viewer.py: same origin, /dicom-web/ proxied to Orthanc) and one headless Chromium serve the
three cases: deepbet on a real T1 brain MR (../shared/data), the CT nodule demo on a synthetic chest with two
nodules, and the radiograph demo on a synthetic chest radiograph with an opacity. For each, through OHIF's own
services, as a radiologist opens them (double click on the series, "Yes" to the prompts):

- the SEG is loaded with the manifest's segment labels and a non-empty label map, and hiding it changes the
  pixels drawn on its fullest slice;
- ``measurementService`` holds each volume and each finding, with the label the SR gives it (value, unit or
  probability, intended use), and hiding each annotation changes the pixels drawn;
- no request from the browser leaves loopback.

Screenshots go to $DICOMNODE_TEST_ARTEFACTS (else the test's tmp folder); the path is printed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from tests.e2e.test_site_models_e2e import results, route, start
from tests.support.net import wait_for
from tests.support.peers import REPO, NodeProcess, Orthanc
from tests.support.synthetic import make_ct_series, make_radiograph, write_series
from tests.support.viewer import ohif_server, viewer_browser
from training.phantoms import TEST_SEED_BASE, ct_chest, radiograph

pytestmark = pytest.mark.e2e

MODELS = ("deepbet", "ct-nodule-demo", "cxr-demo")
CT_SEED = TEST_SEED_BASE + 901  # two nodules the shipped model finds as two components (test_demo_models_e2e)
DX_SEED = TEST_SEED_BASE + 900  # an opacity


@dataclass(frozen=True)
class Case:
    kind: str
    segments: tuple[str, ...]  # the SEG's segment labels
    labels: tuple[str, ...]  # the start of each measurement's label, in any order


CASES = {
    "deepbet": Case("deepbet", ("Brain",), ("Brain: ",)),
    "ct-nodule-demo": Case("ct-nodule-demo", ("Nodule (synthetic-phantom demo; not clinical)",),
                           ("Nodule present, p = ", "Nodule (synthetic-phantom demo; not clinical) 1: ",
                            "Nodule (synthetic-phantom demo; not clinical) 2: ")),
    "cxr-demo": Case("cxr-demo", ("Opacity (synthetic-phantom demo; not clinical) evidence",),
                     ("Opacity (synthetic-phantom demo; not clinical) present, p = ",)),
}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    orthanc = Orthanc(tmp_path_factory.mktemp("viewer-pacs"), dicomweb=True).start()
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def node(pacs: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    folder = tmp_path_factory.mktemp("viewer-node")
    for model in MODELS:
        shutil.copytree(REPO / "models" / model, folder / "models" / model)
    process = start(folder, pacs, "VIEWNODE", "seg", models=folder / "models", DICOMNODE_DEMO_MODELS="true")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def viewer(pacs: Orthanc) -> Iterator[tuple[str, Any, Any]]:
    with ohif_server(pacs.http_port) as origin, viewer_browser() as (context, requests):
        yield origin, context, requests


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("DICOMNODE_TEST_ARTEFACTS")
    folder = Path(root) / "viewer" if root else tmp_path_factory.mktemp("viewer-screens")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nviewer screenshots: {folder}")
    return folder


def _study(kind: str, folder: Path, shared_data: Path) -> Path:
    """The source study of ``kind``, written into ``folder``."""
    if kind == "deepbet":
        shutil.copytree(shared_data / "mr_t1_brain_mni152", folder)
    elif kind == "ct-nodule-demo":
        phantom = ct_chest(CT_SEED, (64, 64, 64), 2.0, nodules=2)
        write_series(make_ct_series(phantom.hu, 2.0, study_uid="2.25.90900900900900900900901"), folder)
    else:
        image = radiograph(DX_SEED, finding=True).image
        pixels = np.rint((image - image.min()) / (image.max() - image.min()) * 4095).astype(np.uint16)
        folder.mkdir(parents=True)
        make_radiograph(pixels).save_as(folder / "dx.dcm", enforce_file_format=True)
    return folder


STATE = """() => {
  const s = window.services;
  return {
    measurements: s.measurementService.getMeasurements().map(m => ({uid: m.uid, label: m.label,
                    image: m.referencedImageId, visible: m.isVisible})),
    segmentations: s.segmentationService.getSegmentations().map(g => ({id: g.segmentationId,
                    segments: Object.values(g.segments).filter(x => x)
                                    .map(x => ({index: x.segmentIndex, label: x.label}))})),
  };
}"""
LABELMAP = """(id) => {
  const g = window.services.segmentationService.getSegmentation(id);
  const ids = (g.representationData.Labelmap || {}).imageIds || [];
  let marked = 0, fullest = -1, most = 0;
  ids.forEach((imageId, k) => {
    const image = window.cornerstone.cache.getImage(imageId);
    if (!image) return;
    const px = image.getPixelData(); let n = 0;
    for (let i = 0; i < px.length; i++) if (px[i]) n++;
    marked += n; if (n > most) { most = n; fullest = k; }
  });
  return {images: ids.length, marked, fullest};
}"""


def _viewport_png(page: Any) -> bytes:
    """The viewport as drawn (OHIF may replace its element while loading: retried until one is taken)."""
    def take() -> bytes:
        return bytes(page.locator(".cornerstone-viewport-element").first.screenshot(timeout=5_000))
    return wait_for(take, timeout=30, msg="a screenshot of the viewport")


def _settled_png(page: Any) -> bytes:
    """The viewport once two screenshots in a row agree (nothing is loading or drawing)."""
    last = [_viewport_png(page)]

    def same() -> bytes | None:
        now = _viewport_png(page)
        settled = now if now == last[0] else None
        last[0] = now
        return settled
    settled = wait_for(same, timeout=60, msg="the viewport settled")
    assert settled is not None
    return settled


HIDE_MEASUREMENT = "(uid) => window.services.measurementService.toggleVisibilityMeasurement(uid, false)"
SHOW_MEASUREMENT = "(uid) => window.services.measurementService.toggleVisibilityMeasurement(uid, true)"
HIDE_SEGMENT = "([v, id]) => window.services.segmentationService.setSegmentVisibility(v, id, 1, false)"
SHOW_SEGMENT = "([v, id]) => window.services.segmentationService.setSegmentVisibility(v, id, 1, true)"
RESET_CAMERA = """() => {
  const v = window.cornerstone.getEnabledElements()[0].viewport; v.resetCamera(); v.render(); }"""
TO_FULLEST = """async ([id, k]) => {
  const g = window.services.segmentationService.getSegmentation(id);
  const image = window.cornerstone.cache.getImage(g.representationData.Labelmap.imageIds[k]);
  const v = window.cornerstone.getEnabledElements()[0].viewport;
  const index = image && image.referencedImageId ? v.getImageIds().indexOf(image.referencedImageId) : -1;
  await v.setImageIdIndex(index >= 0 ? index : k);
}"""
CURRENT_IMAGE = """() => window.cornerstone.getEnabledElements()[0].viewport.getCurrentImageId()"""


def _state(page: Any, ready: Any) -> dict[str, Any] | None:
    state: dict[str, Any] = page.evaluate(STATE)
    return state if ready(state) else None


def _marked(page: Any, segmentation: str) -> dict[str, Any] | None:
    labelmap: dict[str, Any] = page.evaluate(LABELMAP, segmentation)
    return labelmap if labelmap["marked"] else None


def _show(page: Any, viewport: str, measurement: dict[str, Any]) -> None:
    """Jump the viewport to the image ``measurement`` lies on."""
    page.evaluate("([v, uid]) => window.services.measurementService.jumpToMeasurement(v, uid)",
                  [viewport, measurement["uid"]])
    page.evaluate(RESET_CAMERA)
    wait_for(lambda: page.evaluate(CURRENT_IMAGE) == measurement["image"], timeout=30,
             msg=f"the viewport on the image of {measurement['label']}")


def _changes_pixels(page: Any, hide: str, show: str, argument: object) -> bool:
    """Whether running ``hide`` changes the drawn viewport (then ``show`` puts it back)."""
    before = _settled_png(page)
    page.evaluate(hide, argument)
    try:
        return bool(wait_for(lambda: _viewport_png(page) != before, timeout=15, msg="the viewport redrawn"))
    finally:
        page.evaluate(show, argument)


@pytest.mark.parametrize("kind", MODELS)
def test_result_displays_in_ohif(kind: str, pacs: Orthanc, node: NodeProcess, viewer: tuple[str, Any, Any],
                                 artefacts: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    case = CASES[kind]
    shared_data = request.getfixturevalue("shared_data") if kind == "deepbet" else Path()  # deepbet: a real T1
    origin, context, requests = viewer
    study_id = route(pacs, "VIEWNODE", _study(kind, tmp_path / "study", shared_data))
    found = results(pacs, study_id, {"SR", "SEG"})
    descriptions = {}
    for modality in ("SR", "SEG"):
        (instance,) = found[modality]
        descriptions[modality] = str(pacs.get(f"/instances/{instance}/simplified-tags")["SeriesDescription"])
    study_uid = str(dcmread(next((tmp_path / "study").iterdir()), stop_before_pixels=True).StudyInstanceUID)

    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    try:
        page.goto(f"{origin}/viewer?StudyInstanceUIDs={study_uid}")
        page.wait_for_function("() => window.services && window.services.displaySetService"
                               ".getActiveDisplaySets().length >= 3", timeout=120_000)
        viewport = page.evaluate("() => window.services.viewportGridService.getState().activeViewportId")

        # the SR, as a radiologist opens it: double click, then "Yes" to tracking its measurements
        page.get_by_text(descriptions["SR"], exact=True).dblclick()
        page.get_by_role("button", name="Yes").click(timeout=60_000)
        state = wait_for(lambda: _state(page, lambda s: len(s["measurements"]) >= len(case.labels)), timeout=60,
                         msg="the SR's measurements in measurementService")
        assert state is not None
        labels = sorted(m["label"] for m in state["measurements"])
        print(f"\n{kind}: measurementService labels {labels}")
        assert len(labels) == len(case.labels), labels
        for start_ in case.labels:
            assert sum(label.startswith(start_) for label in labels) == 1, (start_, labels)
        assert all(label.endswith(")") for label in labels)  # each ends with the intended use, in brackets
        for measurement in state["measurements"]:
            _show(page, viewport, measurement)
            assert _changes_pixels(page, HIDE_MEASUREMENT, SHOW_MEASUREMENT, measurement["uid"]), measurement["label"]

        # the SEG: double click, "Yes" to opening it
        page.get_by_text(descriptions["SEG"], exact=True).dblclick()
        page.get_by_role("button", name="Yes").click(timeout=60_000)
        state = wait_for(lambda: _state(page, lambda s: bool(s["segmentations"])), timeout=60,
                         msg="the SEG in segmentationService")
        assert state is not None
        (segmentation,) = state["segmentations"]
        assert tuple(s["label"] for s in segmentation["segments"]) == case.segments
        labelmap = wait_for(lambda: _marked(page, segmentation["id"]), timeout=60, msg="a non-empty label map")
        assert labelmap is not None
        assert labelmap["fullest"] >= 0
        # the fullest slice of the label map (a segment's centre can lie between its nodules, on no mask)
        page.evaluate(TO_FULLEST, [segmentation["id"], labelmap["fullest"]])
        page.evaluate(RESET_CAMERA)
        assert _changes_pixels(page, HIDE_SEGMENT, SHOW_SEGMENT, [viewport, segmentation["id"]])
        _show(page, viewport, state["measurements"][0])  # the SEG and the first annotation together
        page.screenshot(path=str(artefacts / f"{kind}.png"))
    except Exception:
        page.screenshot(path=str(artefacts / f"{kind}-failed.png"))
        (artefacts / f"{kind}-console.log").write_text("\n".join(console))
        raise
    finally:
        page.close()
    assert requests.hosts() <= {"127.0.0.1"}, sorted(requests.hosts())
