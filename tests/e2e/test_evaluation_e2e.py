"""End to end with Orthanc: a reader corrects the node's SEG, Orthanc routes the study back, the node
scores its result against the correction.

The test takes the node's SEG from Orthanc, adds and removes voxels, stores the corrected SEG (another
series, another manufacturer, drawn on the same source series) in Orthanc and has Orthanc send the whole
study to the node again: the node's own SEG coming back is recognised and ignored; the correction is
scored, with the Dice the test computes here from the two masks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.jobs.models import ReferenceObject
from tests.e2e.test_site_models_e2e import metrics_text, results, route, start
from tests.support.net import wait_for
from tests.support.peers import REPO, NodeProcess, Orthanc
from tests.support.segs import reader_seg
from tests.support.synthetic import make_series, write_series

pytestmark = pytest.mark.e2e

MODEL = "threshold-test"
VOXEL_ML = 0.8 * 0.9 * 2.0 / 1000  # make_series: pixel spacing 0.8 x 0.9 mm, slices 2 mm apart


@pytest.fixture(scope="module")
def node(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """The site-models node (its threshold segmenter runs on "AISEG" MR series), with a reference rule."""
    process = start(tmp_path_factory.mktemp("evaluation-node"), orthanc, "EVALNODE", "seg",
                    DICOMNODE_REFERENCE=json.dumps({"series_description": "^CORRECTED"}))
    yield process
    process.stop()


def evaluations(node: NodeProcess) -> list[ReferenceObject]:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        rows = list(session.scalars(select(ReferenceObject).order_by(ReferenceObject.id)))
        for row in rows:
            _ = row.segments  # loaded while the session is open
        return rows


def test_corrected_seg_routed_by_orthanc_is_scored_with_the_dice_computed_here(
        orthanc: Orthanc, node: NodeProcess, tmp_path: Path) -> None:
    paths = write_series(make_series(8, 16, 16, series_description="AISEG T1"), tmp_path / "mr")
    study_id = route(orthanc, "EVALNODE", tmp_path / "mr")
    found = results(orthanc, study_id, {"SEG"})
    own = hd.seg.segread(orthanc.download(found["SEG"][0], tmp_path / "node-seg.dcm"))
    sources = sorted((dcmread(p) for p in paths), key=lambda d: int(d.InstanceNumber))
    uids = [str(d.SOPInstanceUID) for d in sources]
    node_mask = own.get_pixels_by_source_instance(uids, [1], assert_missing_frames_are_empty=True)[..., 0] > 0
    corrected = node_mask.copy()
    corrected[:, :, :5] = False  # the reader removes the left columns
    sparse = int(np.argmin(node_mask.sum(axis=(1, 2))))
    corrected[sparse, :3, 5:] = True  # and adds a strip on the slice where the node found least
    assert corrected.sum() != node_mask.sum() and (node_mask & ~corrected).any() and (corrected & ~node_mask).any()
    expected = 2 * np.count_nonzero(node_mask & corrected) / (node_mask.sum() + corrected.sum())

    segment = dcmread(tmp_path / "node-seg.dcm").SegmentSequence[0]  # the reader keeps the node's codes
    own_category = hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyCategoryCodeSequence[0])
    own_type = hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyTypeCodeSequence[0])
    corrected_path = tmp_path / "corrected.dcm"
    reader_seg(sources, corrected, series_description="CORRECTED nodule",
               category=own_category, property_type=own_type).save_as(corrected_path, enforce_file_format=True)
    orthanc.request("POST", "/instances", corrected_path.read_bytes())  # the reader's workstation stores it
    answer = orthanc.request("POST", "/modalities/EVALNODE/store", {"Resources": [study_id], "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0, answer  # the whole study: source, node's SEG and SR, correction

    def judged() -> list[ReferenceObject] | None:
        rows = evaluations(node)
        return rows if len(rows) == 3 else None  # the correction, the node's own SEG and SR
    rows = wait_for(judged, timeout=90, msg="the correction and the node's own SEG and SR judged")
    (evaluated,) = [r for r in rows if r.outcome == "evaluated"]
    assert [r.reason for r in rows if r.outcome == "ignored"] == ["the node's own result"] * 2  # its SEG and SR
    assert evaluated.model_id == MODEL and evaluated.source_series_uid == str(sources[0].SeriesInstanceUID)
    (segment,) = evaluated.segments
    assert segment.dice == pytest.approx(expected, abs=1e-9)
    assert segment.node_ml == pytest.approx(node_mask.sum() * VOXEL_ML)
    assert segment.reference_ml == pytest.approx(corrected.sum() * VOXEL_ML)

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics_text(node)) for s in f.samples}
    assert samples[("dicomnode_model_reference_dice", (("model", MODEL), ("segment", segment.label)))] \
        == pytest.approx(expected)
    assert samples[("dicomnode_model_reference_evaluations_total", (("model", MODEL),))] == 1

    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env |= {"DICOMNODE_DATA_DIR": str(node.data_dir), "DICOMNODE_MODELS_DIR": node.env["DICOMNODE_MODELS_DIR"],
            "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "dicomnode", "models", "evaluate", MODEL], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr
    assert f"{expected:.3f}" in shown.stdout and "n=1" in shown.stdout
