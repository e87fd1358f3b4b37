"""UID collisions are never merged: an instance, series or study belongs to one study and one patient."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.models import AuditRecord
from dicomnode.db import make_engine, make_sessionmaker, session_scope
from dicomnode.errors import UidCollision
from dicomnode.files import free_bytes
from dicomnode.jobs.models import Instance, Series, Study
from dicomnode.jobs.status import StudyState
from dicomnode.store.index import InstanceMeta, record_instance
from dicomnode.store.ingest import drop_orphan, read_meta
from dicomnode.store.spool import clean_uid
from tests.support.synthetic import make_series

A = InstanceMeta(study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.1",
                 sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax_uid="1.2.840.10008.1.2.1",
                 modality="MR", series_number=3, series_description="T1", patient_id="P1", patient_name="DOE^JANE")


def receive(sessions: sessionmaker[Session], meta: InstanceMeta, sha: str = "aaa") -> bool:
    with session_scope(sessions) as session:
        return record_instance(session, meta, path=f"/spool/{meta.study_uid}/{meta.sop_instance_uid}",
                               sha256=sha, size=1, calling_ae="PACS")


def snapshot(sessions: sessionmaker[Session]) -> list[tuple[str, str, str, str, str | None]]:
    with sessions() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.path, Series.series_uid, Study.study_uid,
                                      Study.patient_id).join(Instance.series).join(Series.study)).all()
    return sorted(tuple(r) for r in rows)


def audit_rows(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return len(session.scalars(select(AuditRecord)).all())


@pytest.mark.parametrize(("change", "match"), [
    ({"study_uid": "9.9.9", "series_uid": "9.9.9.4", "patient_id": "P2"},
     "^UID collision: the SOP Instance UID already belongs to another study$"),
    ({"study_uid": "9.9.9", "series_uid": "9.9.9.4"}, "SOP Instance UID .* another study"),
    ({"series_uid": "1.2.3.5"}, "SOP Instance UID .* another series"),
    ({"study_uid": "9.9.9", "sop_instance_uid": "9.9.9.1"}, "Series Instance UID .* another study"),
    ({"sop_instance_uid": "1.2.3.4.2", "patient_id": "P2", "patient_name": "ROE^JOHN"}, "another patient"),
    ({"patient_id": "P2", "patient_name": "ROE^JOHN"}, "another patient"),
], ids=["sop-other-study-and-patient", "sop-other-study", "sop-other-series", "series-other-study",
        "study-other-patient", "same-uids-other-patient"])
def test_collision_is_refused_and_changes_nothing(sessions: sessionmaker[Session], change: dict[str, str],
                                                  match: str) -> None:
    assert receive(sessions, A)
    before, rows = snapshot(sessions), audit_rows(sessions)
    with pytest.raises(UidCollision, match=match):
        receive(sessions, dataclasses.replace(A, **change), sha="bbb")
    assert snapshot(sessions) == before
    assert audit_rows(sessions) == rows  # the refusal is audited by the receiver, not half-recorded here


def test_collision_message_quotes_no_uid_or_patient(sessions: sessionmaker[Session]) -> None:
    receive(sessions, A)
    with pytest.raises(UidCollision) as caught:
        receive(sessions, dataclasses.replace(A, study_uid="9.9.9", series_uid="9.9.9.4", patient_id="P2"))
    assert not any(value in str(caught.value) for value in ("1.2.3", "9.9.9", "P1", "P2", "DOE"))


def test_true_resend_still_dedupes(sessions: sessionmaker[Session]) -> None:
    assert receive(sessions, A)
    before = snapshot(sessions)
    assert not receive(sessions, A)
    assert receive(sessions, dataclasses.replace(A, sop_instance_uid="1.2.3.4.2"))  # a new slice, same study
    assert receive(sessions, A, sha="ccc")  # changed content, same UIDs and patient: a new version
    assert len(snapshot(sessions)) == len(before) + 1


def test_refused_file_is_removed_but_recorded_instances_are_kept(sessions: sessionmaker[Session],
                                                                 tmp_path: Path) -> None:
    kept, refused = tmp_path / "kept.dcm", tmp_path / "refused.dcm"
    kept.write_bytes(b"DICM")
    refused.write_bytes(b"DICM")
    with session_scope(sessions) as session:
        record_instance(session, A, path=str(kept), sha256="aaa", size=4, calling_ae="PACS")
    drop_orphan(sessions, refused)  # another instance is recorded: the refused file is still nobody's
    drop_orphan(sessions, kept)
    assert kept.exists() and not refused.exists()


def test_instance_without_patient_name_keeps_an_empty_name() -> None:
    ds = make_series(1, 4, 4)[0]
    del ds.PatientName
    meta = read_meta(ds, "1.2.840.10008.1.2.1")
    assert meta.patient_name == "" and meta.patient_id == str(ds.PatientID)


def test_instance_header_is_read_cleaned() -> None:
    ds = make_series(1, 4, 4)[0]
    ds.add(DataElement(0x00080060, "CS", "MR\x00", validation_mode=config.IGNORE))  # Modality, NUL-padded
    ds.add(DataElement(0x0008103E, "LO", " T1 SAG AX\x00", validation_mode=config.IGNORE))  # SeriesDescription
    meta = read_meta(ds, "1.2.840.10008.1.2.1")
    assert (meta.modality, meta.series_description) == ("MR", "T1 SAG AX")
    assert (meta.patient_name, meta.patient_id) == ("SYNTHETIC^PHANTOM", "SYN-0001")
    ds.add(DataElement(0x00080060, "CS", "M" * 20, validation_mode=config.IGNORE))  # over CS's 16 characters
    assert read_meta(ds, "1.2.840.10008.1.2.1").modality == "M" * 16


def test_a_uid_over_64_characters_is_refused() -> None:
    assert clean_uid("1." + "2" * 62) == "1." + "2" * 62
    with pytest.raises(ValueError):
        clean_uid("1." + "2" * 63)


def test_free_space_of_a_folder_not_made_yet_is_that_of_its_parent(tmp_path: Path) -> None:
    assert free_bytes(tmp_path / "spool" / "not" / "yet") == free_bytes(tmp_path) > 0


def test_a_new_study_is_receiving_until_it_has_been_quiet(sessions: sessionmaker[Session]) -> None:
    assert receive(sessions, A)
    with sessions() as session:
        study = session.scalars(select(Study)).one()
    assert study.state == StudyState.RECEIVING
    assert study.state_reason == "receiving: complete after study_idle_seconds without a new instance"
    assert study.last_received_at == study.first_received_at


def test_a_refused_file_is_kept_when_the_database_cannot_say_whose_it_is(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'not-migrated.sqlite'}")  # no tables: every query fails
    refused = tmp_path / "refused.dcm"
    refused.write_bytes(b"DICM")
    with caplog.at_level(logging.WARNING):
        drop_orphan(make_sessionmaker(engine), refused)
    engine.dispose()
    assert refused.exists()  # perhaps a recorded instance's: never removed blind
    (logged,) = caplog.records
    assert getattr(logged, "ctx", {}).get("stage") == "receive" and str(refused) not in logged.getMessage()
