"""The loader reads only files that carry the UIDs the database holds for them; a mismatch stops the job."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope
from dicomnode.inference.registry import Registry
from dicomnode.jobs.models import Instance, Job, Series
from dicomnode.jobs.repository import enqueue
from dicomnode.jobs.status import JobStatus
from dicomnode.pipeline import PipelineContext
from dicomnode.settings import Peer, Settings
from dicomnode.store.index import InstanceMeta, record_instance
from dicomnode.store.spool import spool_path, write_atomic
from dicomnode.worker import Worker
from tests.conftest import make_settings
from tests.support.models import write_threshold_model
from tests.support.peers import Orthanc
from tests.support.synthetic import make_series


def _spool(settings: Settings, sessions: sessionmaker[Session], datasets: list[Dataset]) -> None:
    for ds in datasets:
        path = spool_path(settings.spool_dir, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        sha = write_atomic(path, buffer.getvalue())
        meta = InstanceMeta(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                            sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, modality="MR", series_number=7,
                            series_description=ds.SeriesDescription, patient_id=ds.PatientID,
                            patient_name=str(ds.PatientName))
        with session_scope(sessions) as session:
            record_instance(session, meta, path=str(path), sha256=sha, size=1, calling_ae="PACS")


def test_a_file_of_another_study_stops_the_job_with_a_notice(tmp_path: Path, orthanc: Orthanc,
                                                             sessions: sessionmaker[Session],
                                                             settings: Settings) -> None:
    models = write_threshold_model(tmp_path / "models", 40.0).parent
    node = make_settings(settings.data_dir, models_dir=models, device="cpu",
                         pacs=Peer(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port))
    study_a = make_series(n_slices=6, rows=16, columns=16, series_description="CRASHTEST A", patient_id="SYN-A")
    study_b = make_series(n_slices=6, rows=16, columns=16, series_description="CRASHTEST B", patient_id="SYN-B")
    _spool(node, sessions, study_a)
    _spool(node, sessions, study_b)
    with sessions() as session:  # the fault under test: A's row now names a file of study B
        a_path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == study_a[3].SOPInstanceUID))
        b_path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == study_b[3].SOPInstanceUID))
    assert a_path and b_path
    Path(a_path).write_bytes(Path(b_path).read_bytes())
    with session_scope(sessions) as session:
        series = session.scalars(select(Series).where(Series.series_uid == study_a[0].SeriesInstanceUID)).one()
        job = enqueue(session, series, "crash-test", "threshold-test", "1.0")
        assert job is not None
        job_id = job.id

    worker = Worker(PipelineContext(settings=node, sessions=sessions, registry=Registry(models, "cpu")))
    assert worker.run_once()

    with sessions() as session:
        done = session.get(Job, job_id)
        assert done is not None
        status, reason = done.status, done.reason
    assert status is JobStatus.DEAD_LETTER
    assert "differs from the database" in reason and reason.startswith("permanent failure")
    assert not (node.results_dir / f"job-{job_id}" / "results.json").exists()
    results = sorted(p.name.split("-")[0] for p in (node.results_dir / f"job-{job_id}").iterdir())
    assert results == ["notice"]  # no SEG, no SR: only the failure notice
    notice = dcmread(next((node.results_dir / f"job-{job_id}").iterdir()))
    assert notice.StudyInstanceUID == study_a[0].StudyInstanceUID and notice.PatientID == "SYN-A"
    assert orthanc.study_id(str(study_a[0].StudyInstanceUID)) is not None  # the notice reached the PACS
    assert orthanc.study_id(str(study_b[0].StudyInstanceUID)) is None
