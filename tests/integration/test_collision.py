"""The reviewer's case over the wire: study B reuses a SOP Instance UID of study A (another patient)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Instance, Series
from tests.integration.conftest import RunningScp
from tests.support.peers import storescu
from tests.support.synthetic import make_series, write_series


def _send(port: int, ds: object) -> int:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_colliding_instance_of_another_patient_is_refused_not_merged(
    scp: RunningScp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study_a = make_series(n_slices=6, patient_id="SYN-A", patient_name="ALPHA^ONE")
    write_series(study_a, tmp_path / "a")
    assert storescu(scp.port, tmp_path / "a", called="DICOMNODE").returncode == 0
    with scp.sessions() as session:
        before = {i.sop_instance_uid: (i.path, i.sha256, i.series_id) for i in session.scalars(select(Instance))}
    a_file = Path(before[str(study_a[2].SOPInstanceUID)][0])
    a_bytes = a_file.read_bytes()

    intruder = make_series(n_slices=1, patient_id="SYN-B", patient_name="BETA^TWO", slope=5.0)[0]
    intruder.SOPInstanceUID = intruder.file_meta.MediaStorageSOPInstanceUID = study_a[2].SOPInstanceUID
    with caplog.at_level(logging.INFO):
        assert _send(scp.port, intruder) == 0xC213

    with scp.sessions() as session:
        after = {i.sop_instance_uid: (i.path, i.sha256, i.series_id) for i in session.scalars(select(Instance))}
        b_series = session.scalar(select(Series).where(Series.series_uid == str(intruder.SeriesInstanceUID)))
        (row,) = session.scalars(select(AuditRecord).where(AuditRecord.event == "instance_refused"))
    assert after == before  # A still points at A's files
    assert a_file.read_bytes() == a_bytes
    assert b_series is None
    assert not (scp.settings.spool_dir / str(intruder.StudyInstanceUID)).exists()  # nothing of B left behind
    detail = json.loads(row.detail)
    assert detail["status"] == "0xC213" and detail["security_alert"] is True
    assert "another study" in detail["reason"] and detail["sop_instance_uid"] == str(intruder.SOPInstanceUID)
    assert row.study_uid == str(intruder.StudyInstanceUID) and row.patient_id == "SYN-B"
    assert row.patient_name == "BETA^TWO"  # whom the refused instance was of: for the privacy officer
    assert detail["series_uid"] == str(intruder.SeriesInstanceUID)
    logged = caplog.text
    assert "UID collision" in logged
    (refusal,) = [r for r in caplog.records if "refused with 0xC213" in r.getMessage()]
    assert getattr(refusal, "ctx", {}).get("stage") == "receive"  # found by stage, never by a UID or a name
    assert not any(v in logged for v in (str(intruder.SOPInstanceUID), str(intruder.StudyInstanceUID), "SYN-"))

    # a true re-send of A's own instance still dedupes with success
    assert _send(scp.port, dcmread(tmp_path / "a" / "IM0002.dcm")) == 0x0000
    with scp.sessions() as session:
        assert len(session.scalars(select(Instance)).all()) == 6
