"""End to end with Orthanc: site models dropped into a folder, studies routed by Orthanc, results back.

- a DX study comes back with the classification SR and the evidence map as a binary SEG of its evidence
  region (or, for a destination that asks for it, as a secondary-capture overlay);
- an MR study comes back with SEG and SR from the 3D threshold segmenter;
- a model whose output is NaN sends its job to the dead letter, with that reason and a failure notice;
- a folder with a bad manifest is reported at start, and the other models still load;
- every /metrics sample parses, and the per-model metrics moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.jobs.models import Job
from tests.support.models import write_classifier, write_threshold_model
from tests.support.net import free_port, wait_for
from tests.support.peers import REPO, NodeProcess, Orthanc, dciodvfy, sr_validator, storescu
from tests.support.synthetic import make_radiograph, make_series, write_series

pytestmark = pytest.mark.e2e


def models_folder(root: Path) -> Path:
    models = root / "models"
    write_classifier(models)
    write_threshold_model(models, 40.0, rule="mr-aiseg", description_re="^AISEG")
    write_threshold_model(models, 40.0, model_id="nan-model", broken="nan", rule="mr-nan", description_re="^NANTEST")
    bad = write_threshold_model(models, 40.0, model_id="bad-manifest", rule="never", description_re="^NEVER")
    (bad / "manifest.toml").write_text("warmup = true\n" + (bad / "manifest.toml").read_text())
    return models


def start(folder: Path, orthanc: Orthanc, name: str, explanation: str, models: Path | None = None,
          **more_env: str) -> NodeProcess:
    """The node as a process with Orthanc as its PACS; ``models``: its models folder (default: the test models)."""
    pacs = json.dumps({"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                       "explanation": explanation})
    node = NodeProcess(folder, ae_title=name, env={
        "DICOMNODE_PACS": pacs,
        "DICOMNODE_MODELS_DIR": str(models or models_folder(folder)),
        "DICOMNODE_STUDY_IDLE_SECONDS": "1",
        "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.3",
        "DICOMNODE_WORKER_POLL_SECONDS": "0.2",
        "DICOMNODE_MIN_FREE_DISK_MB": "1",
        "DICOMNODE_ADMIN_PORT": str(free_port()),
        "DICOMNODE_INFERENCE_THREADS": "1",
        **more_env,
    }).start()
    orthanc.add_modality(name, name, node.port)
    return node


@pytest.fixture(scope="module")
def node(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    process = start(tmp_path_factory.mktemp("site-node"), orthanc, "SITENODE", "seg")
    yield process
    process.stop()


def route(orthanc: Orthanc, modality: str, folder: Path) -> str:
    """storescu the files into Orthanc, ask Orthanc to send the study to ``modality``; the Orthanc study id."""
    result = storescu(orthanc.dicom_port, folder, called=orthanc.aet)
    assert result.returncode == 0, result.stderr
    study_uid = str(dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID)
    study_id = orthanc.study_id(study_uid)
    assert study_id is not None
    answer = orthanc.request("POST", f"/modalities/{modality}/store", {"Resources": [study_id], "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0, answer
    return study_id


def results(orthanc: Orthanc, study_id: str, wanted: set[str]) -> dict[str, list[str]]:
    def found() -> dict[str, list[str]] | None:
        out: dict[str, list[str]] = {}
        for series in orthanc.series_of(study_id):
            modality = series["MainDicomTags"].get("Modality")
            if modality in ("SEG", "SR", "OT"):
                out.setdefault(modality, []).extend(series["Instances"])
        return out if set(out) >= wanted else None
    return wait_for(found, timeout=120, msg=f"{sorted(wanted)} in Orthanc's study")


def valid(orthanc: Orthanc, instance: str, path: Path) -> object:
    orthanc.download(instance, path)
    assert dciodvfy(path)[0] == [], path.name
    ds = dcmread(path)
    if ds.Modality == "SR":
        assert sr_validator(path)[0] == []
    return ds


def radiograph_study(folder: Path, monochrome1: bool = False) -> Path:
    pixels = np.full((128, 128), 1000, dtype=np.uint16)
    pixels[48:80, 48:80] = 3000
    pixels[0, 0], pixels[-1, -1] = 0, 4095
    folder.mkdir(parents=True)
    make_radiograph(pixels, monochrome1=monochrome1).save_as(folder / "dx.dcm", enforce_file_format=True)
    return folder


def test_dx_study_comes_back_with_sr_and_evidence_seg(orthanc: Orthanc, node: NodeProcess, tmp_path: Path) -> None:
    study_id = route(orthanc, "SITENODE", radiograph_study(tmp_path / "dx"))
    found = results(orthanc, study_id, {"SR", "SEG"})
    sr = valid(orthanc, found["SR"][0], tmp_path / "sr.dcm")
    seg = valid(orthanc, found["SEG"][0], tmp_path / "seg.dcm")
    assert seg.SegmentationType == "BINARY"  # type: ignore[attr-defined]
    assert sr.SeriesDescription.startswith("AI POSITIVE Opacity")  # type: ignore[attr-defined]


def test_mr_study_comes_back_with_seg_and_sr(orthanc: Orthanc, node: NodeProcess, tmp_path: Path) -> None:
    write_series(make_series(8, 16, 16, series_description="AISEG T1"), tmp_path / "mr")
    study_id = route(orthanc, "SITENODE", tmp_path / "mr")
    found = results(orthanc, study_id, {"SR", "SEG"})
    seg = valid(orthanc, found["SEG"][0], tmp_path / "seg.dcm")
    valid(orthanc, found["SR"][0], tmp_path / "sr.dcm")
    assert seg.SegmentationType == "BINARY"  # type: ignore[attr-defined]


def test_nan_model_job_goes_to_the_dead_letter_with_a_notice(orthanc: Orthanc, node: NodeProcess,
                                                              tmp_path: Path) -> None:
    write_series(make_series(8, 16, 16, series_description="NANTEST T1"), tmp_path / "mr")
    study_id = route(orthanc, "SITENODE", tmp_path / "mr")
    found = results(orthanc, study_id, {"SR"})
    notice = valid(orthanc, found["SR"][0], tmp_path / "notice.dcm")
    assert notice.SeriesDescription.startswith("AI result not available")  # type: ignore[attr-defined]
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        (job,) = session.scalars(select(Job).where(Job.model_id == "nan-model"))
        assert job.status.value == "dead_letter"
        assert "model nan-model: output contains NaN" in job.reason


def test_bad_manifest_is_reported_and_the_others_load(node: NodeProcess) -> None:
    log = node.log_path.read_text()
    assert "model bad-manifest" in log and "unknown key 'warmup'" in log


def test_metrics_parse_and_per_model_metrics_moved(orthanc: Orthanc, node: NodeProcess, tmp_path: Path) -> None:
    results(orthanc, route(orthanc, "SITENODE", radiograph_study(tmp_path / "dx")), {"SR"})
    wait_for(lambda: "dicomnode_model_jobs_total" in metrics_text(node), timeout=60, msg="per-model job counter")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics_text(node)) for s in family.samples}
    count = samples[("dicomnode_model_inference_seconds_count",
                     (("model", "region-classifier"), ("version", "2.1")))]
    assert count >= 1
    assert samples[("dicomnode_model_jobs_total", (("model", "region-classifier"), ("outcome", "succeeded")))] >= 1
    assert samples[("dicomnode_model_probability_count", (("model", "region-classifier"), ("output", "Opacity")))] >= 1


def metrics_text(node: NodeProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.env['DICOMNODE_ADMIN_PORT']}/metrics", timeout=10) as rsp:
        return str(rsp.read().decode())


def test_destination_asking_for_sc_gets_the_overlay(orthanc: Orthanc, tmp_path: Path) -> None:
    node = start(tmp_path / "node", orthanc, "SCNODE", "sc")
    try:
        study_id = route(orthanc, "SCNODE", radiograph_study(tmp_path / "cr", monochrome1=True))
        found = results(orthanc, study_id, {"SR", "OT"})
        overlay = valid(orthanc, found["OT"][0], tmp_path / "sc.dcm")
        assert overlay.PhotometricInterpretation == "RGB"  # type: ignore[attr-defined]
        assert overlay.ImageComments.startswith("Intended use: Test fixture only")  # type: ignore[attr-defined]
        valid(orthanc, found["SR"][0], tmp_path / "sr.dcm")
        assert "SEG" not in found
    finally:
        node.stop()


def test_drift_is_flagged_in_status_and_metrics(orthanc: Orthanc, node: NodeProcess, tmp_path: Path) -> None:
    """The classifier's reference range for Opacity is 0 to 0.3 over its last 2 outputs; two bright DX
    studies (probability 0.865 each) leave it."""
    for name in ("a", "b"):
        results(orthanc, route(orthanc, "SITENODE", radiograph_study(tmp_path / name)), {"SR"})
    key = ("dicomnode_model_drift", (("model", "region-classifier"), ("output", "Opacity")))
    wait_for(lambda: any((s.name, tuple(sorted(s.labels.items()))) == key and s.value == 1
                         for f in text_string_to_metric_families(metrics_text(node)) for s in f.samples),
             timeout=60, msg="drift flag in /metrics")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env |= {"DICOMNODE_DATA_DIR": str(node.data_dir), "DICOMNODE_MODELS_DIR": node.env["DICOMNODE_MODELS_DIR"]}
    status = subprocess.run([sys.executable, "-m", "dicomnode", "status"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert status.returncode == 0, status.stderr
    assert ("DRIFT WARNING: model region-classifier: mean Opacity of the last 2 outputs is 0.865, "
            "outside the reference range 0 to 0.3") in status.stdout
