"""Results to a real DICOMweb archive: Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb) as a
``dicomweb`` destination. An outage is retried; a rejection goes to the dead letter, as for C-STORE."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.inference.registry import Registry
from dicomnode.jobs.models import Delivery
from dicomnode.jobs.status import JobStatus
from dicomnode.pipeline import PipelineContext
from dicomnode.settings import Destination, Settings
from dicomnode.worker import Worker
from tests.conftest import make_settings
from tests.integration.test_delivery import a_job, job_state
from tests.support.certs import make_ca, make_cert, tls_proxy
from tests.support.models import write_threshold_model
from tests.support.net import free_port, wait_for
from tests.support.peers import DICOMWEB_PLUGIN, Orthanc
from tests.support.trail import audit_rows


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    if not Path(DICOMWEB_PLUGIN).is_file():
        raise AssertionError("Orthanc's DICOMweb plugin is not installed: run scripts/test.sh, which installs "
                             "orthanc-dicomweb with the other real peers")
    server = Orthanc(tmp_path_factory.mktemp("archive"), dicomweb=True).start()
    yield server
    server.stop()


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return write_threshold_model(tmp_path / "models", 40.0).parent


def _worker(settings: Settings, sessions: sessionmaker[Session], models: Path, url: str,
            send: tuple[str, ...], ca_file: Path | None = None) -> Worker:
    archive = Destination.model_validate({"name": "archive", "kind": "dicomweb", "url": url, "send": send,
                                          "tls_ca_file": ca_file})
    node = make_settings(settings.data_dir, models_dir=models, device="cpu", retry_base_seconds=0.05,
                         destinations=[archive])
    return Worker(PipelineContext(settings=node, sessions=sessions, registry=Registry(models, "cpu")))


def _url(archive: Orthanc) -> str:
    return f"http://127.0.0.1:{archive.http_port}/dicom-web"


def test_results_reach_the_archive(settings: Settings, sessions: sessionmaker[Session], models: Path,
                                   archive: Orthanc, caplog: pytest.LogCaptureFixture) -> None:
    job_id = a_job(settings, sessions)
    with caplog.at_level(logging.INFO, logger="dicomnode.send"):
        assert _worker(settings, sessions, models, _url(archive), ("SEG",)).run_once()
    answered = [r.__dict__["ctx"] for r in caplog.records if r.getMessage() == "STOW-RS answered"]
    assert answered == [{"stage": "send", "destination": "archive", "status": 200}]  # what IT staff read
    assert job_state(sessions, job_id)[0] is JobStatus.SUCCEEDED
    with sessions() as session:
        (delivery,) = session.scalars(select(Delivery).where(Delivery.job_id == job_id))
    assert delivery.outcome == "stored" and delivery.destination == _url(archive)
    assert archive.get(f"/instances/{_orthanc_id(archive, delivery.sop_instance_uid)}")["MainDicomTags"]
    (sent,) = audit_rows(sessions, "result_sent")  # the archive, by name, at the host of its URL
    assert (sent.actor, sent.outcome, json.loads(sent.detail)["address"]) == ("archive", "success", "127.0.0.1")


def _orthanc_id(archive: Orthanc, sop_uid: str) -> str:
    hits = archive.request("POST", "/tools/lookup", sop_uid.encode())
    return str(next(h["ID"] for h in hits if h["Type"] == "Instance"))


def test_an_outage_is_retried(settings: Settings, sessions: sessionmaker[Session], models: Path) -> None:
    job_id = a_job(settings, sessions)
    assert _worker(settings, sessions, models, f"http://127.0.0.1:{free_port()}/dicom-web", ("SEG",)).run_once()
    status, reason = job_state(sessions, job_id)
    assert status is JobStatus.QUEUED and "retry" in reason


def test_a_rejection_goes_to_the_dead_letter(settings: Settings, sessions: sessionmaker[Session], models: Path,
                                             archive: Orthanc, tmp_path: Path) -> None:
    refusing = Orthanc(tmp_path / "refusing", dicomweb=True, reject_stow=True).start()
    try:
        job_id = a_job(settings, sessions)
        assert _worker(settings, sessions, models, _url(refusing), ("SEG", "SR")).run_once()
    finally:
        refusing.stop()
    status, reason = job_state(sessions, job_id)
    assert status is JobStatus.DEAD_LETTER and "HTTP 403" in reason, reason
    # a security-relevant failure of the results' send, with why (the failure notice's own row aside)
    (failed,) = [row for row in audit_rows(sessions, "result_send_failed") if "kind" not in json.loads(row.detail)]
    assert (failed.actor, failed.outcome) == ("archive", "serious_failure")
    assert json.loads(failed.detail)["reason"] == "archive rejected the results: HTTP 403"
    # whose results, and where they were going: the study and the archive's address (ATNA's access point)
    assert failed.study_uid is not None and failed.patient_id is not None
    assert json.loads(failed.detail)["address"] == "127.0.0.1"


def test_https_with_the_archive_ca_and_without(settings: Settings, sessions: sessionmaker[Session], models: Path,
                                               archive: Orthanc, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki", "archive-ca")
    with tls_proxy(archive.http_port, make_cert(ca, tmp_path / "pki", "archive")) as port:
        url = f"https://127.0.0.1:{port}/dicom-web"
        untrusted = a_job(settings, sessions)
        assert _worker(settings, sessions, models, url, ("SEG",)).run_once()  # system CAs: not trusted
        status, reason = job_state(sessions, untrusted)
        assert status is JobStatus.QUEUED and "no answer" in reason, reason
        trusted = a_job(settings, sessions)
        worker = _worker(settings, sessions, models, url, ("SEG",), ca_file=ca.cert)
        wait_for(lambda: worker.run_once() and job_state(sessions, trusted)[0] is JobStatus.SUCCEEDED,
                 timeout=60, msg="delivered over HTTPS", interval=0.1)
