"""A study's result files, as DICOMweb (QIDO-RS, WADO-RS) lists them, come in the order of their jobs, on
each database: PostgreSQL returns rows in no particular order without ORDER BY (an updated row moves)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import session_scope
from dicomnode.dicomweb.results import result_files
from dicomnode.jobs.models import Job, Series, Study
from dicomnode.jobs.repository import enqueue
from dicomnode.results.files import write_results
from tests.conftest import make_settings
from tests.support.synthetic import make_series


def test_result_files_come_in_the_order_of_their_jobs(any_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    with session_scope(any_sessions) as session:
        study = Study(study_uid="1.2.3", calling_ae="PACS")
        series = [Series(series_uid=f"1.2.3.{i}", study=study) for i in range(3)]
        session.add_all(series)
        session.flush()
        jobs = [enqueue(session, s, "r", "deepbet", "1") for s in series]
        ids = [j.id for j in jobs if j is not None]
    with session_scope(any_sessions) as session:  # the oldest jobs changed last: their rows move on PostgreSQL
        for job_id, each in zip(ids[:2], series[:2], strict=True):
            session.execute(update(Job).where(Job.id == job_id).values(reason="changed"))
            session.execute(update(Series).where(Series.id == each.id).values(route_reason="changed"))
    made = {}
    for job_id in ids:
        ds = make_series(n_slices=1, rows=4, columns=4, study_uid="1.2.3")[0]
        write_results(settings.results_dir, job_id, [ds], {}, 0.0, "")
        made[job_id] = str(ds.SOPInstanceUID)
    listed = [str(f.header.SOPInstanceUID) for f in result_files(settings, any_sessions, "1.2.3")]
    assert listed == [made[job_id] for job_id in sorted(ids)]
