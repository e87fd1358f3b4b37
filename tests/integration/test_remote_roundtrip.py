"""The edge's side of remote inference (dicomnode.remote.roundtrip) run in this process against a real cloud
node (``dicomnode serve`` with the model, a sender account): what comes back is the cloud's SEG and SR for
the series, in the patient's own study again; what went out and what the database keeps are the
de-identified UIDs only; a retry sends the same ones; a refused login or an unreadable password stops for
good; a cloud that computes nothing is a retryable timeout, and one that stores nothing for lack of resources
(0xA7xx) is tried again later. (tests/e2e/test_edge_cloud.py runs the same
round trip between two node processes and Orthanc.)"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.db import session_scope
from dicomnode.errors import SendError
from dicomnode.inference.manifest import RemoteBackend
from dicomnode.jobs.models import DeidUid, RemoteRun, Series, Study
from dicomnode.jobs.repository import ClaimedJob, enqueue
from dicomnode.remote.roundtrip import Timings, run_remote
from dicomnode.settings import Settings
from tests.e2e.test_edge_cloud import NAME, PASSWORD, PID, _series, start_cloud

TIMEOUT = 60.0  # the cloud's sweep (1 s idle), worker and model: seconds on an idle machine, more when busy


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    node, admin_port = start_cloud(tmp_path_factory.mktemp("cloud"))
    try:
        yield f"http://127.0.0.1:{admin_port}"
    finally:
        node.stop()


def _backend(url: str, folder: Path, password: str = PASSWORD, **more: object) -> RemoteBackend:
    secret = folder / "cloud.password"
    secret.write_text(password + "\n")
    return RemoteBackend(url=url, user="edge", password_file=secret, poll_seconds=0.2,
                         **{"timeout_seconds": TIMEOUT, **more})  # type: ignore[arg-type]


def _job(sessions: sessionmaker[Session], series: list[Dataset]) -> ClaimedJob:
    study_uid, series_uid = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
    with session_scope(sessions) as session:
        row = Series(series_uid=series_uid, study=Study(study_uid=study_uid, calling_ae="PACS"))
        session.add(row)
        session.flush()
        job = enqueue(session, row, "cloud", "threshold-test", "1")
        assert job is not None
        return ClaimedJob(id=job.id, series_id=row.id, series_uid=series_uid, series_number=1, study_uid=study_uid,
                          patient_id=PID, patient_name=NAME, model_id="threshold-test", model_version="1",
                          revision=1, attempts=1)


def _map(sessions: sessionmaker[Session], job_id: int) -> dict[str, str]:
    """The job's UID map as kept, each original UID in one row."""
    with sessions() as session:
        rows = session.scalars(select(DeidUid).where(DeidUid.job_id == job_id)).all()
    kept = {r.original_uid: r.deid_uid for r in rows}
    assert len(kept) == len(rows)
    return kept


def test_results_come_back_into_the_patients_study_and_only_deidentified_uids_went_out(
        cloud: str, settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    series = _series()
    job = _job(sessions, series)
    timings = Timings()
    caplog.set_level(logging.INFO, logger="dicomnode.remote.roundtrip")
    results = run_remote(settings, sessions, job, _backend(cloud, tmp_path), series, timings)

    assert sorted(str(ds.Modality) for ds in results) == ["SEG", "SR"]
    for ds in results:  # re-identified: the patient's own study and series, the patient's name
        assert ds.StudyInstanceUID == job.study_uid and ds.PatientName == NAME and ds.PatientID == PID
    seg = next(ds for ds in results if ds.Modality == "SEG")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == job.series_uid
    uid_map = _map(sessions, job.id)
    originals = {job.study_uid, job.series_uid, str(series[0].FrameOfReferenceUID),
                 *(str(ds.SOPInstanceUID) for ds in series)}
    assert set(uid_map) == originals and not originals & set(uid_map.values())
    with sessions() as session:
        run = session.get(RemoteRun, job.id)
        assert run is not None and run.deid_study_uid == uid_map[job.study_uid] != job.study_uid
        (export,) = session.scalars(select(AuditRecord).where(AuditRecord.event == "begin_transfer_out")).all()
    detail = json.loads(export.detail)
    assert export.study_uid == uid_map[job.study_uid] and detail["deidentified"] is True
    assert detail["kind"] == "remote inference"
    assert detail["destination"] == cloud and detail["instances"] == len(series) and detail["job_id"] == job.id
    assert NAME not in export.detail and PID not in export.detail and job.study_uid not in export.detail
    assert set(timings.seconds) == {"deidentify", "upload", "wait", "download", "reidentify"}
    assert all(seconds >= 0 for seconds in timings.seconds.values())
    (done,) = [r for r in caplog.records if r.getMessage() == "remote inference done"]  # the stages' seconds
    assert getattr(done, "ctx", None) == {"stage": "remote", "job_id": job.id, **timings.seconds}

    again = run_remote(settings, sessions, job, _backend(cloud, tmp_path), series)  # a retry of the same job
    assert _map(sessions, job.id) == uid_map  # the same de-identified UIDs, kept once
    assert sorted(str(ds.Modality) for ds in again) == ["SEG", "SR"]
    assert {str(ds.SeriesInstanceUID) for ds in again} == {str(ds.SeriesInstanceUID) for ds in results}


def test_a_refused_login_stops_for_good(cloud: str, settings: Settings, sessions: sessionmaker[Session],
                                        tmp_path: Path) -> None:
    series = _series()
    with pytest.raises(SendError, match=r"^remote backend refused the login: HTTP 401$") as refused:
        run_remote(settings, sessions, _job(sessions, series), _backend(cloud, tmp_path, "not-the-password"), series)
    assert refused.value.retryable is False


def test_an_unreadable_password_file_stops_for_good(cloud: str, settings: Settings, sessions: sessionmaker[Session],
                                                    tmp_path: Path) -> None:
    series = _series()
    backend = _backend(cloud, tmp_path).model_copy(update={"password_file": tmp_path / "missing"})
    with pytest.raises(SendError, match=r"^remote backend password_file unreadable: No such file or directory$") as err:
        run_remote(settings, sessions, _job(sessions, series), backend, series)
    assert err.value.retryable is False


def test_a_cloud_that_computes_nothing_is_a_retryable_timeout(cloud: str, settings: Settings,
                                                              sessions: sessionmaker[Session], tmp_path: Path) -> None:
    series = _series()
    for ds in series:  # the cloud's rule takes MR only: this series is stored there and never computed
        ds.Modality = "OT"
    with pytest.raises(SendError, match=r"^remote backend had no results after timeout_seconds=1.5$") as late:
        run_remote(settings, sessions, _job(sessions, series), _backend(cloud, tmp_path, timeout_seconds=1.5), series)
    assert late.value.retryable is True



def test_a_cloud_out_of_resources_is_tried_again_later(settings: Settings, sessions: sessionmaker[Session],
                                                       tmp_path: Path) -> None:
    """A cloud that refuses every instance with 0xA700 (out of resources: here, each larger than its
    max_instance_mb) stored nothing; that may pass, so the job is retried, not failed for good."""
    node, admin_port = start_cloud(tmp_path / "cloud", DICOMNODE_MAX_INSTANCE_MB="0.001")
    try:
        series = _series()
        backend = _backend(f"http://127.0.0.1:{admin_port}", tmp_path)
        with pytest.raises(SendError, match=r"^remote backend did not store the series: 0xA700(, 0xA700){7}$") as full:
            run_remote(settings, sessions, _job(sessions, series), backend, series)
        assert full.value.retryable is True
    finally:
        node.stop()
