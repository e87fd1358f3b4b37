"""DICOMweb over the results a real job wrote: a sender that STOW-RS'd a study finds, by QIDO-RS, each result
series with its number and description and each result instance with its number, and the failure notice of a
job that failed, which WADO-RS retrieves. Real admin server, real worker and model, DCMTK storescp as the PACS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.auth import hash_password
from dicomnode.inference.registry import Registry
from dicomnode.jobs.models import Job
from dicomnode.jobs.status import JobStatus
from dicomnode.pipeline import PipelineContext
from dicomnode.results.files import RESULTS_SUMMARY
from dicomnode.settings import AdminUser, Peer, Settings
from dicomnode.worker import Worker
from tests.conftest import make_settings
from tests.support.admin import admin_server, exchange, login
from tests.support.models import write_threshold_model
from tests.support.net import free_port
from tests.support.peers import storescp
from tests.support.spooled import queue_job
from tests.support.synthetic import make_series

USERS = [AdminUser(name="edge-a", password_hash=hash_password("sender-pass", 1000), role="sender")]


@dataclass
class Node:
    """A running admin server (``base``) and worker on one data folder; the PACS is a real storescp."""

    base: str
    settings: Settings
    sessions: sessionmaker[Session]
    worker: Worker


@pytest.fixture
def node(settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Node]:
    models = tmp_path / "models"
    write_threshold_model(models, 40.0)  # threshold-test: a SEG and an SR for a CRASHTEST series
    write_threshold_model(models, 40.0, model_id="nan-model", broken="nan", rule="mr-nan", description_re="^NANTEST")
    with storescp(tmp_path / "pacs") as port:
        configured = make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=USERS,
                                   models_dir=models, device="cpu",
                                   pacs=Peer(ae_title="STORESCP", host="127.0.0.1", port=port))
        worker = Worker(PipelineContext(settings=configured, sessions=sessions, registry=Registry(models, "cpu")))
        with admin_server(configured, sessions) as url:
            yield Node(url, configured, sessions, worker)


def _client(node: Node) -> DICOMwebClient:
    token = login(node.base, "edge-a", "sender-pass")
    return DICOMwebClient(url=f"{node.base}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def _stow_and_run(node: Node, client: DICOMwebClient, description: str, model_id: str) -> tuple[str, Path]:
    """STOW-RS a series as the sender, then run ``model_id``'s job on it; the study UID and the job's folder."""
    series = make_series(n_slices=6, rows=16, columns=12, series_description=description, patient_id="WEB-RES")
    answer = client.store_instances(series)
    assert len(answer.ReferencedSOPSequence) == len(series) and "FailedSOPSequence" not in answer
    job_id = queue_job(node.sessions, str(series[0].SeriesInstanceUID), model_id)
    assert node.worker.run_once()
    return str(series[0].StudyInstanceUID), node.settings.results_dir / f"job-{job_id}"


def _job_status(node: Node, folder: Path) -> JobStatus:
    with node.sessions() as session:
        job = session.get(Job, int(folder.name.removeprefix("job-")))
        assert job is not None
        return job.status


def _value(answer: dict[str, dict[str, list[object]]], tag: str) -> object:
    """The single value of ``tag`` in a DICOM JSON answer; None when the answer carries it empty."""
    values = answer.get(tag, {}).get("Value")
    return values[0] if values else None


def _headers(folder: Path) -> list[Dataset]:
    return [dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


def test_series_search_carries_each_result_series_number_and_description(node: Node) -> None:
    """QIDO-RS series search answers each result series with the SeriesNumber and SeriesDescription of its file."""
    client = _client(node)
    study_uid, folder = _stow_and_run(node, client, "CRASHTEST web", "threshold-test")
    assert _job_status(node, folder) is JobStatus.SUCCEEDED
    written = {str(h.SeriesInstanceUID): h for h in _headers(folder)}
    assert {str(h.Modality) for h in written.values()} >= {"SEG", "SR"}

    hits = client.search_for_series(study_uid)
    assert sorted(str(_value(hit, "0020000E")) for hit in hits) == sorted(written)
    for hit in hits:
        header = written[str(_value(hit, "0020000E"))]
        assert header.SeriesNumber is not None and str(header.SeriesDescription)
        assert _value(hit, "00200011") == int(header.SeriesNumber)
        assert _value(hit, "0008103E") == str(header.SeriesDescription)
        # PS3.18 10.6.3.3.2: where the series is retrieved from
        assert str(_value(hit, "00081190")).endswith(f"/studies/{study_uid}/series/{header.SeriesInstanceUID}")


def test_a_result_file_that_no_longer_reads_is_left_out_and_the_others_are_still_found(node: Node) -> None:
    """A damaged file among a job's results (say, the first it lists) hides itself only."""
    client = _client(node)
    study_uid, folder = _stow_and_run(node, client, "CRASHTEST damaged", "threshold-test")
    assert _job_status(node, folder) is JobStatus.SUCCEEDED
    listed = [folder / name for name in json.loads((folder / RESULTS_SUMMARY).read_text())["paths"]]
    assert len(listed) >= 2
    survivors = {str(dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in listed[1:]}
    listed[0].write_bytes(b"not DICOM")  # what a disk error or a hand edit leaves
    hits = client.search_for_series(study_uid)
    assert {str(_value(hit, "0020000E")) for hit in hits} == survivors

def test_instance_search_carries_each_result_instance_number(node: Node) -> None:
    """QIDO-RS instance search answers each result instance with the InstanceNumber of its file."""
    client = _client(node)
    study_uid, folder = _stow_and_run(node, client, "CRASHTEST web", "threshold-test")
    assert _job_status(node, folder) is JobStatus.SUCCEEDED
    headers = _headers(folder)
    assert headers
    for header in headers:
        (hit,) = client.search_for_instances(study_uid, str(header.SeriesInstanceUID))
        assert _value(hit, "00080018") == str(header.SOPInstanceUID)
        assert header.InstanceNumber is not None
        assert _value(hit, "00200013") == int(header.InstanceNumber)


def test_a_failed_jobs_notice_is_searched_and_retrieved(node: Node) -> None:
    """The failure notice of a job that failed is found by QIDO-RS (series and instance) and retrieved by WADO-RS."""
    client = _client(node)
    study_uid, folder = _stow_and_run(node, client, "NANTEST web", "nan-model")
    assert _job_status(node, folder) is JobStatus.DEAD_LETTER
    (path,) = folder.iterdir()  # the notice, and no result: nothing else was written
    assert path.name.startswith("notice-")
    notice = dcmread(path)

    (hit,) = client.search_for_series(study_uid)
    assert _value(hit, "0020000E") == str(notice.SeriesInstanceUID) and _value(hit, "00080060") == "SR"
    assert str(_value(hit, "0008103E")).startswith("AI result not available (nan-model)")
    assert client.search_for_series(study_uid, search_filters={"Modality": "SR"}) == [hit]
    (instance,) = client.search_for_instances(study_uid, str(notice.SeriesInstanceUID))
    assert _value(instance, "00080018") == str(notice.SOPInstanceUID)
    assert _value(instance, "00080016") == str(notice.SOPClassUID)

    retrieved = client.retrieve_instance(study_uid, str(notice.SeriesInstanceUID), str(notice.SOPInstanceUID))
    assert retrieved == notice
    (whole,) = client.retrieve_series(study_uid, str(notice.SeriesInstanceUID))
    assert whole.SOPInstanceUID == notice.SOPInstanceUID
    # PS3.18 8.7: a media type the node does not serve is 406, saying which it serves; none asked is served
    token = login(node.base, "edge-a", "sender-pass")
    path = f"/dicomweb/studies/{study_uid}/series/{notice.SeriesInstanceUID}"
    for accept, status in (("application/json", 406), ("image/jpeg", 406), ("", 200),
                           ('multipart/related; type="application/dicom"', 200)):
        answer = exchange(node.base, "GET", path, {"Authorization": f"Bearer {token}",
                                                   **({"Accept": accept} if accept else {})})
        assert answer.status == status, accept
        if status == 406:
            assert json.loads(answer.text) == {
                "detail": 'results are served as multipart/related; type="application/dicom"'}
