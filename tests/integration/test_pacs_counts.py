"""Counts from the PACS: a query peer's NumberOf*RelatedInstances complete a study at once, or not.

Orthanc (the PACS, a query peer) holds a 189-slice study and routes it to the node (running in this
process). With ``study_idle_seconds = 30`` no idle wait can pass: a job that starts within 0.5 s of the
last instance was started by the counts. When Orthanc holds one instance more than it routes, the counts
differ and the idle timer decides. An Orthanc that refuses the node's C-FIND leaves the idle timer too,
with the refused query in the audit trail.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import config_store
from dicomnode.audit.models import AuditRecord
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.jobs.models import Job, JobEvent, Series, Study
from dicomnode.jobs.repository import enqueue
from dicomnode.jobs.status import JobStatus
from dicomnode.migrate import upgrade
from dicomnode.node import Node, start_node
from dicomnode.query.counts import PacsCounts
from dicomnode.results.files import job_folder, result_file_name, write_dataset
from dicomnode.settings import Peer, Settings
from tests.conftest import make_settings
from tests.support.cli import run_cli
from tests.support.models import write_threshold_model
from tests.support.net import free_port, wait_for
from tests.support.peers import Orthanc, storescu
from tests.support.status import status_of, study_page
from tests.support.synthetic import make_series, write_series

SLICES = 189


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", receipts_enabled=False).start()
    yield server
    server.stop()


def run_node(tmp_path: Path, orthanc: Orthanc, *, idle: float, register: bool = True) -> Node:
    """The node with Orthanc as its PACS and query peer; Orthanc knows it as modality NODE when ``register``
    (else Orthanc refuses its C-FIND: an unknown AE title)."""
    models = write_threshold_model(tmp_path / "models", 40.0).parent
    settings = make_settings(tmp_path / "data", host="127.0.0.1", port=free_port(), models_dir=models,
                             pacs=Peer(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, query=True),
                             peers=[Peer(ae_title="STORESCU", host="127.0.0.1")], min_free_disk_mb=1,
                             study_idle_seconds=idle)
    if register:
        orthanc.add_modality("NODE", settings.ae_title, settings.port)
    node = start_node(settings)
    node.ctx.registry.get("threshold-test")  # warm, as a worker is before its first claim
    return node


def upload(orthanc: Orthanc, folder: Path, extra: int = 0) -> tuple[str, list[str]]:
    """A 189-slice study (plus ``extra`` slices of another series) into Orthanc; its UID and the routed
    instances' Orthanc ids (the extra ones left out)."""
    series = make_series(n_slices=SLICES, rows=32, columns=32, series_description="CRASHTEST T1",
                         patient_id="COUNTS-1")
    study_uid = str(series[0].StudyInstanceUID)
    more = make_series(n_slices=extra, rows=32, columns=32, series_description="LOCALISER", study_uid=study_uid,
                       patient_id="COUNTS-1", series_number=1) if extra else []
    write_series(series, folder / "main")
    if more:
        write_series(more, folder / "more")
    assert storescu(orthanc.dicom_port, folder, called=orthanc.aet).returncode == 0
    study_id = orthanc.study_id(study_uid)
    assert study_id is not None
    keep = {str(ds.SOPInstanceUID) for ds in series}
    routed = [i["ID"] for i in orthanc.get(f"/studies/{study_id}/instances")
              if i["MainDicomTags"]["SOPInstanceUID"] in keep]
    assert len(routed) == SLICES
    return study_uid, routed


def late_instance(orthanc: Orthanc, folder: Path, like: str) -> str:
    """One more slice of the series of Orthanc instance ``like``, stored into Orthanc; its Orthanc id."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = dcmread(orthanc.download(like, folder / "like.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.ImagePositionPatient = ["-10.0000", "-20.0000", "28.0000"]  # a slice step before make_series' first
    (folder / "like.dcm").unlink()
    ds.save_as(folder / "late.dcm", enforce_file_format=True)
    assert storescu(orthanc.dicom_port, folder / "late.dcm", called=orthanc.aet).returncode == 0
    hits = orthanc.request("POST", "/tools/lookup", str(ds.SOPInstanceUID).encode())
    return str(next(h["ID"] for h in hits if h["Type"] == "Instance"))


def revisions(node: Node, study_uid: str) -> list[int]:
    """The revisions of the study's jobs that have run."""
    with node.ctx.sessions() as session:
        jobs = session.scalars(select(Job).join(Job.series).join(Series.study).where(Study.study_uid == study_uid)
                               .order_by(Job.revision)).all()
        return [j.revision for j in jobs if j.status != JobStatus.QUEUED]


def route(orthanc: Orthanc, instances: list[str]) -> None:
    answer = orthanc.request("POST", "/modalities/NODE/store", {"Resources": instances, "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0, answer


def _utc(at: dt.datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()


def started(node: Node, study_uid: str) -> dict[str, Any] | None:
    """When the study's job started running, its last instance, and what the PACS said; None before."""
    with node.ctx.sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        job = session.scalar(select(Job).join(Job.series).join(Series.study).where(Study.study_uid == study_uid))
        if study is None or job is None:
            return None
        running = session.scalar(select(JobEvent).where(JobEvent.job_id == job.id,
                                                        JobEvent.to_status == JobStatus.RUNNING))
        if running is None:
            return None
        assert study.completed_at is not None
        return {"delay": _utc(running.at) - _utc(study.last_received_at), "pacs": study.pacs_instances,
                "routed": _utc(study.completed_at) - _utc(study.last_received_at),
                "asked": _utc(study.pacs_asked_at) - _utc(study.last_received_at) if study.pacs_asked_at else None,
                "note": study.pacs_note, "series": {s.description: s.pacs_instances for s in study.series}}


def queries(node: Node, study_uid: str) -> list[AuditRecord]:
    with node.ctx.sessions() as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.event == "query",
                                                              AuditRecord.study_uid == study_uid)))


def decoded(row: AuditRecord) -> Dataset:
    return read_dataset(DicomBytesIO(base64.b64decode(json.loads(row.detail)["query"])), True, True)  # type: ignore[arg-type]


def test_counts_that_match_start_the_job_at_once(tmp_path: Path, orthanc: Orthanc,
                                                caplog: pytest.LogCaptureFixture) -> None:
    study_uid, instances = upload(orthanc, tmp_path / "in")
    node = run_node(tmp_path, orthanc, idle=30.0)
    try:
        route(orthanc, instances)
        seen = wait_for(lambda: started(node, study_uid), timeout=25, msg="job running before the idle timer",
                        interval=0.05)
        assert seen is not None
        late = late_instance(orthanc, tmp_path / "late", instances[0])
        route(orthanc, [late])  # the PACS's count grows: a new revision, again without the idle timer
        wait_for(lambda: revisions(node, study_uid) == [1, 2], timeout=25, msg="a second revision by counts")
    finally:
        node.stop()
    assert seen["pacs"] == SLICES and seen["series"] == {"CRASHTEST T1": SLICES}, seen
    assert seen["delay"] < 0.5, f"the job started {seen['delay']:.3f} s after the last instance"
    failed = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert failed == []  # no sweep failed on the way (a failed one is retried, and would hide here otherwise)
    rows = queries(node, study_uid)
    assert rows and all(r.outcome == "success" and r.actor == orthanc.aet for r in rows)
    assert all(r.patient_id is None and r.patient_name is None for r in rows)
    levels = {decoded(r).QueryRetrieveLevel for r in rows}
    assert levels == {"STUDY", "SERIES"}
    now = SLICES + 1  # with the late instance; the node's own SEG and SR at the PACS are not the study's count
    assert f"PACS holds {now} instance(s), the node {now}" in status_of(node, study_uid)
    assert f"[{now} of the PACS's {now}]" in status_of(node, study_uid)
    assert f"the PACS holds {now} instance(s), the node received {now}" in study_page(node, study_uid)
    for row in rows:  # the query as the PACS saw it: UIDs and the counts asked for, nothing about the patient
        keywords = set(decoded(row).dir())
        assert keywords <= {"QueryRetrieveLevel", "StudyInstanceUID", "SeriesInstanceUID",
                            "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries",
                            "NumberOfSeriesRelatedInstances"}, keywords


def test_one_instance_more_at_the_pacs_waits_for_the_idle_timer(tmp_path: Path, orthanc: Orthanc) -> None:
    idle = 3.0
    study_uid, instances = upload(orthanc, tmp_path / "in", extra=1)
    node = run_node(tmp_path, orthanc, idle=idle)
    try:
        route(orthanc, instances)
        seen = wait_for(lambda: started(node, study_uid), timeout=60, msg="job running after the idle timer",
                        interval=0.05)
        assert seen is not None
    finally:
        node.stop()
    assert seen["pacs"] == SLICES + 1, seen
    assert seen["delay"] >= idle, f"the job started {seen['delay']:.3f} s after the last instance"
    assert f"PACS holds {SLICES + 1} instance(s), the node {SLICES}" in status_of(node, study_uid)


def test_a_pacs_that_refuses_the_query_leaves_the_idle_timer(tmp_path: Path, orthanc: Orthanc) -> None:
    idle = 2.0
    folder = tmp_path / "in"
    series = make_series(n_slices=20, rows=32, columns=32, series_description="CRASHTEST T1", patient_id="COUNTS-2")
    study_uid = str(series[0].StudyInstanceUID)
    write_series(series, folder)
    assert storescu(orthanc.dicom_port, folder, called=orthanc.aet).returncode == 0
    node = run_node(tmp_path, orthanc, idle=idle, register=False)  # Orthanc does not know the node's AE title
    try:
        assert storescu(node.settings.port, folder, called=node.settings.ae_title).returncode == 0
        seen = wait_for(lambda: started(node, study_uid), timeout=60, msg="job running after the idle timer",
                        interval=0.05)
        assert seen is not None
    finally:
        node.stop()
    assert seen["pacs"] is None and "ORTHANC" in seen["note"], seen
    assert seen["delay"] >= idle
    rows = queries(node, study_uid)
    assert rows and all(r.outcome == "minor_failure" for r in rows)
    assert "ORTHANC" in json.loads(rows[0].detail)["reason"]



def dicomnode(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env |= {"DICOMNODE_DATA_DIR": str(settings.data_dir), "COLUMNS": "200"}
    return run_cli(args, env)


def test_a_query_peer_added_by_the_cli(settings: Settings, sessions: sessionmaker[Session]) -> None:
    done = dicomnode(settings, "peers", "add", "PACS2", "10.0.0.9", "104", "--query", "--retrieve", "move")
    assert done.returncode == 0, done.stderr
    assert dicomnode(settings, "peers", "add", "MOD1", "10.1.0.0/16", "104", "--query").returncode == 0
    with sessions() as session:
        peers = {p.ae_title: p for p in config_store.list_peers(session)}
    assert (peers["PACS2"].query, peers["PACS2"].retrieve) == (True, "move")
    assert [p.ae_title for p in config_store.query_peers(settings, sessions)] == ["PACS2"]  # a network is not called
    assert "yes (move)" in dicomnode(settings, "peers", "list").stdout
    refused = dicomnode(settings, "peers", "add", "PACS3", "10.0.0.9", "104", "--retrieve", "fetch")
    assert refused.returncode != 0 and "--retrieve must be get or move" in refused.stderr, refused.stderr


def test_a_result_the_pacs_holds_before_its_delivery_is_recorded_is_not_counted(tmp_path: Path,
                                                                                orthanc: Orthanc) -> None:
    """The node's result reaches the PACS a moment before the node records its delivery: a question asked
    then must still leave it out of the study's count (it did not when the node's own series were read
    from delivery rows: on a busy machine a late instance's study then waited for the idle timer)."""
    settings = make_settings(tmp_path / "data", pacs=Peer(ae_title=orthanc.aet, host="127.0.0.1",
                                                          port=orthanc.dicom_port, query=True))
    orthanc.add_modality("NODE", settings.ae_title, settings.port)
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    source = make_series(n_slices=3, rows=8, columns=8, series_description="CRASHTEST T1")
    write_series(source, tmp_path / "source")
    assert storescu(orthanc.dicom_port, tmp_path / "source", called=orthanc.aet).returncode == 0
    study_uid = str(source[0].StudyInstanceUID)
    with session_scope(sessions) as session:
        series = Series(series_uid=str(source[0].SeriesInstanceUID),
                        study=Study(study_uid=study_uid, calling_ae=orthanc.aet))
        session.add(series)
        session.flush()
        job = enqueue(session, series, "rule", "threshold-test", "1")
        assert job is not None
        session.flush()
        study_id, job_id = series.study_id, job.id
    result = make_series(n_slices=1, rows=8, columns=8, series_description="RESULT", study_uid=study_uid,
                         series_number=9000)[0]
    write_dataset(job_folder(settings.results_dir, job_id) / result_file_name(result), result)  # then sent:
    write_series([result], tmp_path / "result")
    assert storescu(orthanc.dicom_port, tmp_path / "result", called=orthanc.aet).returncode == 0
    counts = PacsCounts(settings, sessions)
    try:
        counts(study_id).result(timeout=60)  # no delivery row yet
    finally:
        counts.stop()
    with sessions() as session:
        study = session.get(Study, study_id)
        assert study is not None
        assert (study.pacs_instances, study.pacs_note) == (3, ""), "the node's own result counted as the study's"
        assert [s.pacs_instances for s in study.series] == [3]
