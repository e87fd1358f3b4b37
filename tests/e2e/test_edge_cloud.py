"""Edge to cloud on loopback: Orthanc routes a study to an edge node without the model; the edge
de-identifies it (PS3.15 Annex E Basic profile), sends it by STOW-RS to a cloud node that has the model,
fetches the SEG and SR by WADO-RS, re-identifies them and sends them into the original study on Orthanc.
The cloud never holds the patient's name (typed into descriptions, comments and staff names too), ID,
birth date, accession number, institution, study date or original UIDs, in any file, packed or not. A
study with burned-in annotation is never sent: its job fails with that reason and a failure notice."""

from __future__ import annotations

import gzip
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicomnode.admin.auth import hash_password
from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.status import JobStatus
from tests.e2e.test_reliability import jobs
from tests.support.models import write_threshold_model
from tests.support.net import free_port, port_open, wait_for
from tests.support.peers import NodeProcess, Orthanc, dciodvfy, sr_validator, storescu
from tests.support.synthetic import make_series, write_series

pytestmark = pytest.mark.e2e

NAME, PID, BIRTH, ACCESSION = "QUIXOTE^ZEBULON", "EDGE-PID-4242", "19610203", "ACC-778899"
INSTITUTION, STUDY_DATE = "ST WENDELIN INFIRMARY", "20230405"
PASSWORD = "cloud-sender-pass"


def _series(burned_in: str | None = None) -> list[Dataset]:
    """An MR series whose descriptions, comments, staff names and other text carry the patient's name and
    identifiers, as a busy technologist or a RIS leaves them."""
    family, given = NAME.split("^")
    series = make_series(n_slices=8, rows=16, columns=16, patient_name=NAME, patient_id=PID,
                         series_description=f"CRASHTEST T1 {given.lower()} {family}")  # the edge's rule: ^CRASHTEST
    for ds in series:
        ds.PatientBirthDate, ds.AccessionNumber, ds.InstitutionName = BIRTH, ACCESSION, INSTITUTION
        ds.StudyDescription = f"MR BRAIN {family} {PID}"
        ds.ReferringPhysicianName = ds.OperatorsName = ds.PerformingPhysicianName = f"{family}^{given}"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = STUDY_DATE
        ds.ImageComments = f"patient {NAME} born {BIRTH} acc {ACCESSION}"
        ds.ProtocolName = f"T1 {family}"
        ds.StationName = family[:16]
        ds.InstitutionAddress = f"{INSTITUTION}, 1 {family} Road"
        ds.RequestedProcedureDescription = f"{family} {ACCESSION}"
        ds.PerformedProcedureStepDescription = f"{given} {PID}"
        ds.AdditionalPatientHistory = f"{NAME} {BIRTH}"
        ds.OtherPatientIDs = PID
        if burned_in is not None:
            ds.BurnedInAnnotation = burned_in
    return series


def start_cloud(folder: Path, **env: str) -> tuple[NodeProcess, int]:
    models = write_threshold_model(folder / "models", 40.0).parent
    admin_port = free_port()
    users = [{"name": "edge", "password_hash": hash_password(PASSWORD, 1000), "role": "sender"}]
    rules = [{"name": "cloud", "model": "threshold-test", "match": {"Modality": "^MR$"}}]
    node = NodeProcess(folder, ae_title="CLOUD", env={
        "DICOMNODE_MODELS_DIR": str(models), "DICOMNODE_ADMIN_PORT": str(admin_port),
        "DICOMNODE_ADMIN_USERS": json.dumps(users), "DICOMNODE_RULES": json.dumps(rules),
        "DICOMNODE_STUDY_IDLE_SECONDS": "1", "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.3",
        "DICOMNODE_WORKER_POLL_SECONDS": "0.2", "DICOMNODE_MIN_FREE_DISK_MB": "1", **env,
    }).start()
    wait_for(lambda: port_open(admin_port), timeout=60, msg="cloud admin port")
    return node, admin_port


def start_edge(folder: Path, pacs: Orthanc, cloud_url: str, **env: str) -> NodeProcess:
    """An edge node that has the model's manifest but not its file: prefer-local sends it to the cloud."""
    model = write_threshold_model(folder / "models", 40.0)
    (model / "model.onnx").unlink()
    password = folder / "cloud.password"
    password.write_text(PASSWORD)
    with open(model / "manifest.toml", "a") as manifest:
        manifest.write(f'\n[remote]\nurl = "{cloud_url}"\nuser = "edge"\npassword_file = "{password}"\n'
                       'placement = "prefer-local"\npoll_seconds = 0.3\ntimeout_seconds = 60\n')
    return NodeProcess(folder, ae_title="EDGE", env={
        "DICOMNODE_PACS": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
        "DICOMNODE_MODELS_DIR": str(model.parent), "DICOMNODE_STUDY_IDLE_SECONDS": "1",
        "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.3", "DICOMNODE_WORKER_POLL_SECONDS": "0.2",
        "DICOMNODE_MIN_FREE_DISK_MB": "1", "DICOMNODE_RETRY_BASE_SECONDS": "0.5", **env,
    }).start()


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


def route_to_edge(pacs: Orthanc, edge: NodeProcess, folder: Path, burned_in: str | None = None) -> list[Dataset]:
    series = _series(burned_in)
    write_series(series, folder)
    assert storescu(pacs.dicom_port, folder, called=pacs.aet).returncode == 0
    pacs.add_modality("EDGE", edge.ae_title, edge.port)
    study_id = pacs.study_id(str(series[0].StudyInstanceUID))
    answer = pacs.request("POST", "/modalities/EDGE/store", {"Resources": [study_id], "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0, answer
    return series


def _results(pacs: Orthanc, study_uid: str) -> dict[str, list[str]]:
    study_id = pacs.study_id(study_uid)
    found: dict[str, list[str]] = {}
    for series in pacs.series_of(study_id) if study_id else []:
        modality = series["MainDicomTags"].get("Modality")
        if modality in ("SEG", "SR"):
            found.setdefault(modality, []).extend(series["Instances"])
    return found


def audit_rows(node: NodeProcess, event: str) -> list[AuditRecord]:
    with Session(create_engine(f"sqlite:///{node.data_dir / 'dicomnode.db'}")) as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.event == event)))


def _secrets(series: list[Dataset]) -> list[str]:
    """What must not reach the cloud, lower case (the search is case-blind)."""
    uids = {str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID), str(series[0].FrameOfReferenceUID)}
    uids |= {str(ds.SOPInstanceUID) for ds in series}
    words = [NAME, NAME.replace("^", " "), *NAME.split("^"), PID, BIRTH, "1961-02-03", ACCESSION, INSTITUTION,
             STUDY_DATE]
    return [w.lower() for w in words] + sorted(uids)


def _contents(path: Path) -> Iterator[tuple[str, bytes]]:
    """A file's bytes, lower case; a gzip or zip file's unpacked contents too."""
    data = path.read_bytes()
    yield str(path), data.lower()
    if data[:2] == b"\x1f\x8b":
        yield f"{path} (gunzipped)", gzip.decompress(data).lower()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                yield f"{path}!{member}", archive.read(member).lower()


def leaks(folder: Path, secrets: list[str]) -> list[tuple[str, str]]:
    """(file, secret) for every secret found in any file under ``folder``."""
    return [(name, secret) for path in sorted(folder.rglob("*")) if path.is_file()
            for name, data in _contents(path) for secret in secrets if secret.encode() in data]


def test_a_study_comes_back_from_the_cloud_into_its_own_study(pacs: Orthanc, tmp_path: Path) -> None:
    cloud, admin_port = start_cloud(tmp_path / "cloud")
    edge = start_edge(tmp_path / "edge", pacs, f"http://127.0.0.1:{admin_port}")
    try:
        series = route_to_edge(pacs, edge, tmp_path / "series")
        study_uid = str(series[0].StudyInstanceUID)
        found = wait_for(lambda: (r := _results(pacs, study_uid)) and "SEG" in r and "SR" in r and r, timeout=180,
                         msg="SEG and SR from the cloud in the original study")
    finally:
        edge.stop()
        cloud.stop()
    sources = {str(ds.SOPInstanceUID) for ds in series}
    for modality, ids in found.items():
        path = pacs.download(ids[0], tmp_path / f"{modality}.dcm")
        ds = dcmread(path)
        assert (ds.StudyInstanceUID, ds.PatientID, str(ds.PatientName)) == (study_uid, PID, NAME)
        assert ds.AccessionNumber == ACCESSION and "PatientIdentityRemoved" not in ds
        assert dciodvfy(path)[0] == [], modality
        if modality == "SEG":
            refs = {str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
            assert refs == sources and ds.FrameOfReferenceUID == series[0].FrameOfReferenceUID
        else:
            assert sr_validator(path)[0] == []
            evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
            assert evidence.StudyInstanceUID == study_uid
    exports = [r for r in audit_rows(edge, "begin_transfer_out") if "remote inference" in r.detail]
    assert exports and all(r.study_uid != study_uid and r.patient_id is None for r in exports)  # de-identified UID
    imports = audit_rows(cloud, "instances_received")  # one row per request and study, with the count
    assert sum(json.loads(r.detail)["instances"] for r in imports) == len(series)
    assert {r.actor for r in imports} == {"edge"}
    spooled = list((cloud.data_dir / "spool").rglob("*.dcm"))
    assert len(spooled) == len(series)  # the search below has data: the cloud's copies, results, database, log
    assert (cloud.data_dir / "dicomnode.db").is_file() and cloud.log_path.stat().st_size > 0
    assert len([p for p in (cloud.data_dir / "results").rglob("*.dcm")]) >= 2
    received = dcmread(spooled[0])
    assert received.PatientIdentityRemoved == "YES" and received.DeidentificationMethodCodeSequence[0].CodeValue \
        == "113100"
    assert received.PixelData and "StudyDescription" not in received and "SeriesDescription" not in received
    assert leaks(tmp_path / "cloud", _secrets(series)) == []
    assert len({secret for _, secret in leaks(edge.data_dir / "spool", _secrets(series))}) > 10  # the search works


def test_a_cloud_outage_is_retried_then_noticed_never_lost(pacs: Orthanc, tmp_path: Path) -> None:
    edge = start_edge(tmp_path / "edge", pacs, f"http://127.0.0.1:{free_port()}",
                      DICOMNODE_RETRY_MAX_ATTEMPTS="2")
    try:
        series = route_to_edge(pacs, edge, tmp_path / "series")
        study_uid = str(series[0].StudyInstanceUID)
        wait_for(lambda: [j for j in jobs(edge) if j.status is JobStatus.DEAD_LETTER], timeout=120,
                 msg="the job dead-lettered after its retries")
        notice = wait_for(lambda: _results(pacs, study_uid).get("SR"), timeout=60, msg="the failure notice")
    finally:
        edge.stop()
    (job,) = jobs(edge)
    assert job.attempts == 2 and "no answer" in job.reason
    assert dcmread(pacs.download(notice[0], tmp_path / "notice.dcm")).SeriesDescription.startswith(
        "AI result not available")
    spooled = [p for p in (edge.data_dir / "spool").rglob("*.dcm")]
    assert len(spooled) == len(series)  # the study is still on the edge


def test_a_study_with_burned_in_annotation_is_not_sent(pacs: Orthanc, tmp_path: Path) -> None:
    edge = start_edge(tmp_path / "edge", pacs, f"http://127.0.0.1:{free_port()}")
    try:
        series = route_to_edge(pacs, edge, tmp_path / "series", burned_in="YES")
        study_uid = str(series[0].StudyInstanceUID)
        wait_for(lambda: [j for j in jobs(edge) if j.status is JobStatus.DEAD_LETTER], timeout=120,
                 msg="the job dead-lettered")
        notice = wait_for(lambda: _results(pacs, study_uid).get("SR"), timeout=60, msg="the failure notice")
    finally:
        edge.stop()
    (job,) = jobs(edge)
    assert job.attempts == 1 and job.reason.endswith("not sent to the remote model: burned-in annotation")
    text = dcmread(pacs.download(notice[0], tmp_path / "notice.dcm")).ContentSequence[0].TextValue
    assert "not sent to the remote model: burned-in annotation" in text
    assert [r for r in audit_rows(edge, "begin_transfer_out") if "remote inference" in r.detail] == []
