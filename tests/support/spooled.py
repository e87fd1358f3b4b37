"""Put a synthetic series straight into a node's spool and database, as the receiver would, and queue a job."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope
from dicomnode.files import write_atomic
from dicomnode.jobs.models import Series
from dicomnode.jobs.repository import enqueue
from dicomnode.receive.incoming import INCOMING
from dicomnode.settings import Peer, Settings
from dicomnode.store.index import InstanceMeta, record_instance
from dicomnode.store.spool import spool_path


def spool(settings: Settings, sessions: sessionmaker[Session], datasets: list[Dataset]) -> None:
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
            record_instance(session, meta, path=str(path), sha256=sha, size=len(buffer.getvalue()),
                            calling_ae="PACS")


def queue_job(sessions: sessionmaker[Session], series_uid: str, model_id: str = "threshold-test",
              version: str = "1.0") -> int:
    with session_scope(sessions) as session:
        series = session.scalars(select(Series).where(Series.series_uid == series_uid)).one()
        job = enqueue(session, series, "crash-test", model_id, version)
        assert job is not None
        return job.id


def run_jobs(settings: Settings, sessions: sessionmaker[Session], series: list[list[Dataset]], sink: Path,
             model_id: str = "threshold-test", version: str = "1.0") -> None:
    """Spool each series, queue ``model_id`` on it and run the job; the results go to a real DCMTK storescp."""
    from dicomnode.inference.registry import Registry
    from dicomnode.pipeline import PipelineContext
    from dicomnode.worker import Worker
    from tests.support.peers import storescp

    with storescp(sink) as port:
        pacs = Peer.parse(f"STORESCP@127.0.0.1:{port}")
        worker = Worker(PipelineContext(settings=settings.model_copy(update={"pacs": pacs}), sessions=sessions,
                                        registry=Registry(settings.models_dir)))
        for datasets in series:
            spool(settings, sessions, datasets)
            queue_job(sessions, str(datasets[0].SeriesInstanceUID), model_id, version)
            assert worker.run_once()


def spool_entries(settings: Settings) -> list[Path]:
    """Every file and folder in the spool but the (empty) folder incoming datasets arrive in: its files,
    a refused or cut-off dataset's leftovers, are listed."""
    if not settings.spool_dir.exists():
        return []
    incoming = settings.spool_dir / INCOMING
    return [p for p in settings.spool_dir.rglob("*") if p != incoming]
