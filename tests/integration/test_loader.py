"""The loader reads only files that carry the UIDs the database holds for them; a mismatch stops the job."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.inference.registry import Registry
from dicomnode.jobs.models import Instance, Job
from dicomnode.jobs.status import JobStatus
from dicomnode.pipeline import PipelineContext
from dicomnode.settings import Peer, Settings
from dicomnode.worker import Worker
from tests.conftest import make_settings
from tests.support.models import write_threshold_model
from tests.support.peers import Orthanc
from tests.support.spooled import queue_job, spool
from tests.support.synthetic import make_series


def test_a_file_of_another_study_stops_the_job_with_a_notice(tmp_path: Path, orthanc: Orthanc,
                                                             sessions: sessionmaker[Session],
                                                             settings: Settings) -> None:
    models = write_threshold_model(tmp_path / "models", 40.0).parent
    node = make_settings(settings.data_dir, models_dir=models, device="cpu",
                         pacs=Peer(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port))
    study_a = make_series(n_slices=6, rows=16, columns=16, series_description="CRASHTEST A", patient_id="SYN-A")
    study_b = make_series(n_slices=6, rows=16, columns=16, series_description="CRASHTEST B", patient_id="SYN-B")
    spool(node, sessions, study_a)
    spool(node, sessions, study_b)
    with sessions() as session:  # the fault under test: A's row now names a file of study B
        a_path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == study_a[3].SOPInstanceUID))
        b_path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == study_b[3].SOPInstanceUID))
    assert a_path and b_path
    Path(a_path).write_bytes(Path(b_path).read_bytes())
    job_id = queue_job(sessions, study_a[0].SeriesInstanceUID)

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
