"""``dicomnode export training``: two cases the node processed (results sent to DCMTK's storescp), one
corrected by a reader. The export loads with MONAI's ``load_decathlon_datalist``; the reader's label is
exported for one case, the node's own (a pseudo-label) for the other; and no exported file holds the
patient's name, ID or birth date, the accession number or any original UID.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import update

from dicomnode.cli.main import main
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.evaluation.compare import segment_masks
from dicomnode.evaluation.references import evaluate_pending
from dicomnode.inference.registry import Registry
from dicomnode.jobs.models import Study
from dicomnode.jobs.status import StudyState
from dicomnode.migrate import upgrade
from dicomnode.results.files import node_seg_path
from tests.conftest import make_settings
from tests.support.models import write_threshold_model
from tests.support.segs import reader_seg
from tests.support.spooled import run_jobs, spool
from tests.support.synthetic import make_series

IDENTIFIERS = {"PatientName": "EXPORT^JANE^Q", "PatientID": "PID-734291", "PatientBirthDate": "19510203",
               "AccessionNumber": "ACC99812"}


def patient_series(description: str) -> list[Dataset]:
    series = make_series(8, 16, 16, series_description=description, patient_name=IDENTIFIERS["PatientName"],
                         patient_id=IDENTIFIERS["PatientID"])
    for ds in series:
        ds.PatientBirthDate, ds.AccessionNumber = IDENTIFIERS["PatientBirthDate"], IDENTIFIERS["AccessionNumber"]
    return series


def exported_text(out: Path) -> list[tuple[Path, bytes]]:
    files = [p for p in out.rglob("*") if p.is_file()]
    return [(p, gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()) for p in files]


def test_export_loads_with_monai_keeps_the_reader_label_and_nothing_identifying(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_threshold_model(tmp_path / "models", 40.0)
    settings = make_settings(tmp_path / "data", models_dir=tmp_path / "models",
                             reference={"series_description": "^CORRECTED"})
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    corrected_case, pseudo_case = patient_series("CRASHTEST a"), patient_series("CRASHTEST b")
    run_jobs(settings, sessions, [corrected_case, pseudo_case], tmp_path / "sink")

    node_seg = node_seg_path(settings.results_dir, 1)
    assert node_seg is not None
    own = segment_masks(dcmread(node_seg))[1].frames
    node_mask = np.stack([own.get(str(ds.SOPInstanceUID), np.zeros((16, 16), bool)) for ds in corrected_case])
    corrected = node_mask.copy()
    corrected[:, 10:, :] = False
    corrected[0, 0:2, 0:4] = True
    spool(settings, sessions, [reader_seg(corrected_case, corrected)])
    with session_scope(sessions) as session:  # the study is complete again (what the sweep does after idle)
        session.execute(update(Study).values(state=StudyState.ROUTED))
    assert evaluate_pending(settings, sessions, Registry(settings.models_dir).manifests) == 1

    monkeypatch.setenv("DICOMNODE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(settings.models_dir))
    out = tmp_path / "export"
    assert main(["export", "training", "--model", "threshold-test", "--since", "2999-01-01", str(out)]) == 1
    assert main(["export", "training", "--model", "threshold-test", str(out)]) == 0

    datalist = load_decathlon_datalist(str(out / "datalist.json"), data_list_key="training", base_dir=str(out))
    assert len(datalist) == 2 and all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in datalist)
    entries = json.loads((out / "datalist.json").read_text())["training"]
    assert [e["pseudo_label"] for e in entries] == [False, True]
    label = np.transpose(np.asarray(nib.load(datalist[0]["label"]).dataobj), (2, 1, 0))
    assert np.array_equal(label == 1, corrected)  # the reader's label, on the image's grid
    image = np.transpose(np.asarray(nib.load(datalist[0]["image"]).dataobj), (2, 1, 0))
    assert np.allclose(image, np.stack([ds.pixel_array * 2.0 - 100.0 for ds in corrected_case]))

    uids = {str(ds[k].value) for ds in corrected_case + pseudo_case
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")}
    secrets = {*IDENTIFIERS.values(), "EXPORT", "PID-734291", *uids}
    for path, content in exported_text(out):
        found = [s for s in secrets if s.encode() in content]
        assert found == [], f"{path.name} holds {found}"
