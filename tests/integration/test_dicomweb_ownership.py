"""Sender isolation and audit floods on DICOMweb, with a real client (dicomweb-client) over loopback.

A study belongs to the sender that first stored it. Another sender's store into it gets the answer that
any instance whose UIDs another study holds gets (0xC213), whatever its Patient ID, stores nothing and is
a security alert per burst; that sender's QIDO-RS and WADO-RS of the study are 404. A STOW-RS body of
10,000 bad parts is a few audit rows, each with its count.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from hashlib import sha256
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Instance, Series, Study, StudySender
from dicomnode.net.multipart import encode_related
from dicomnode.settings import Settings
from dicomnode.store.ownership import study_owner
from tests.conftest import make_settings
from tests.integration.conftest import StartScp
from tests.integration.test_dicomweb import USERS, _write_results
from tests.support.admin import admin_server, login
from tests.support.net import free_port
from tests.support.synthetic import make_series

DICOM_JSON = "application/dicom+json"


def _settings(settings: Settings, **overrides: object) -> Settings:
    values: dict[str, object] = {"admin_port": free_port(), "min_free_disk_mb": 1, "admin_users": USERS,
                                 "dicomweb_max_body_bytes": 64 * 1024, **overrides}
    return make_settings(settings.data_dir, **values)


@pytest.fixture
def bursts(sessions: sessionmaker[Session]) -> BurstAuditor:
    """The node's burst auditor, which the test flushes as the node's scheduler would."""
    return BurstAuditor(sessions, 60.0)




def _client(base: str, user: str, password: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{base}/dicomweb", headers={"Authorization": f"Bearer {login(base, user, password)}"})


def _study(patient_name: str, patient_id: str, n: int = 2) -> list[Dataset]:
    return make_series(n_slices=n, rows=16, columns=12, patient_name=patient_name, patient_id=patient_id)


def _new_instance(study_uid: str, patient_id: str, series_uid: str | None = None) -> Dataset:
    """One instance of ``study_uid`` (new series and SOP Instance UIDs unless ``series_uid`` is given)."""
    (ds,) = make_series(n_slices=1, rows=16, columns=12, patient_name="GUESS^WHO", patient_id=patient_id,
                        study_uid=study_uid)
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    return ds


def _refused(client: DICOMwebClient, ds: Dataset) -> tuple[int, str, Any]:
    """The HTTP status, media type and body shape (the UIDs the client sent left out) of a refused store."""
    with pytest.raises(requests.HTTPError) as caught:
        client.store_instances([ds])
    response = caught.value.response
    answer = Dataset.from_json(response.json())
    items = [(sorted(e.keyword for e in item), int(item.FailureReason)) for item in answer.FailedSOPSequence]
    return response.status_code, response.headers["Content-Type"], (sorted(e.keyword for e in answer), items)


def _holdings(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Everything a store could change: the rows of studies, series, instances and owners, the spool."""
    with sessions() as session:
        studies = [(s.study_uid, s.patient_id, s.patient_name, s.last_received_at)
                   for s in session.scalars(select(Study).order_by(Study.id))]
        series = session.scalar(select(func.count()).select_from(Series))
        instances = sorted((i.sop_instance_uid, i.sha256, i.path) for i in session.scalars(select(Instance)))
        owners = sorted((o.study_id, o.user) for o in session.scalars(select(StudySender)))
    spool = {str(p): sha256(p.read_bytes()).hexdigest() for p in settings.spool_dir.rglob("*") if p.is_file()}
    return {"studies": studies, "series": series, "instances": instances, "owners": owners, "spool": spool}


def _rows(sessions: sessionmaker[Session], event: str, after: int = 0) -> list[tuple[AuditRecord, dict[str, Any]]]:
    with sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == event, AuditRecord.id > after)
                               .order_by(AuditRecord.id))
        return [(r, json.loads(r.detail)) for r in rows]


def _last_audit_id(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.max(AuditRecord.id))) or 0)


def _not_found(call: Callable[[], object]) -> None:
    with pytest.raises(requests.HTTPError, match="404"):
        call()


def test_a_sender_cannot_store_into_or_read_another_senders_study(settings: Settings, sessions: sessionmaker[Session],
                                                                  bursts: BurstAuditor) -> None:
    configured = _settings(settings)
    with admin_server(configured, sessions, bursts=bursts) as base:
        b = _client(base, "edge-b", "other-pass")
        theirs = _study("SENDER^BEE", "B-1")
        study_uid = str(theirs[0].StudyInstanceUID)
        assert len(b.store_instances(theirs).ReferencedSOPSequence) == len(theirs)
        _write_results(configured, sessions, theirs)  # B's SEG and SR, with B's patient's name and ID
        before = _holdings(configured, sessions)

        a = _client(base, "edge-a", "sender-pass")
        wrong_id = _refused(a, _new_instance(study_uid, "GUESS-1"))
        right_id = _refused(a, _new_instance(study_uid, "B-1"))
        # the same client's store into a study UID that nobody has, of an instance whose series B's study holds
        nobodys = _refused(a, _new_instance(generate_uid(), "B-1", str(theirs[0].SeriesInstanceUID)))
        assert wrong_id == right_id == nobodys
        assert nobodys == (409, DICOM_JSON, (["FailedSOPSequence"], [(
            ["FailureReason", "ReferencedSOPClassUID", "ReferencedSOPInstanceUID"], 0xC213)]))
        assert _holdings(configured, sessions) == before  # nothing stored, B's study untouched

        (result,) = b.search_for_series(study_uid, search_filters={"Modality": "SR"})
        series_uid = result["0020000E"]["Value"][0]
        _not_found(lambda: a.search_for_series(study_uid))
        _not_found(lambda: a.search_for_instances(study_uid, series_uid))
        _not_found(lambda: a.retrieve_series(study_uid, series_uid))
        assert b.retrieve_series(study_uid, series_uid)[0].PatientID == "B-1"
    bursts.flush(everything=True)

    alerts = _rows(sessions, "study_not_owned")
    assert [(d["burst"], d["count"], r.actor, r.study_uid, r.patient_id) for r, d in alerts] == [
        ("first", 1, "edge-a", study_uid, None), ("ended", 1, "edge-a", study_uid, None)]
    assert all(d["security_alert"] and d["status"] == "0xC213" and r.outcome == "serious_failure" for r, d in alerts)
    (collision,) = _rows(sessions, "instance_refused")
    assert collision[1]["security_alert"] and collision[1]["count"] == 1 and collision[0].actor == "edge-a"
    assert all("SENDER^BEE" not in r.detail for r, _ in [*alerts, collision])


def _c_store(port: int, ds: Dataset) -> int:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_a_study_from_the_pacs_is_no_senders(settings: Settings, sessions: sessionmaker[Session],
                                             bursts: BurstAuditor, start_scp_with: StartScp) -> None:
    scp = start_scp_with()
    configured = _settings(settings)
    pacs = _study("PACS^PATIENT", "P-1")
    assert [_c_store(scp.port, ds) for ds in pacs] == [0, 0]
    pacs_uid = str(pacs[0].StudyInstanceUID)
    with admin_server(configured, sessions, bursts=bursts) as base:
        a = _client(base, "edge-a", "sender-pass")
        before = _holdings(configured, sessions)
        into_pacs = _refused(a, _new_instance(pacs_uid, "P-1"))
        assert into_pacs == _refused(a, _new_instance(generate_uid(), "P-1", str(pacs[0].SeriesInstanceUID)))
        assert into_pacs[0] == 409 and _holdings(configured, sessions) == before
        _not_found(lambda: a.search_for_series(pacs_uid))
        admin = _client(base, "boss", "admin-pass")
        assert admin.store_instances([_new_instance(pacs_uid, "P-1")]).ReferencedSOPSequence  # admins may

        # the hospital's flow: a sender's study, then the PACS sends into it by C-STORE; it stays the sender's
        mine = _study("SENDER^AY", "A-1")
        assert a.store_instances(mine).ReferencedSOPSequence
        assert _c_store(scp.port, _new_instance(str(mine[0].StudyInstanceUID), "A-1")) == 0
        assert a.store_instances([_new_instance(str(mine[0].StudyInstanceUID), "A-1")]).ReferencedSOPSequence
    with sessions() as session:
        owners = [(s.study_uid, o.user) for o, s in session.execute(
            select(StudySender, Study).join(Study, StudySender.study_id == Study.id))]
        counts = {uid: n for uid, n in session.execute(select(Study.study_uid, func.count()).join(Series)
                                                       .join(Instance).group_by(Study.study_uid))}
    assert owners == [(str(mine[0].StudyInstanceUID), "edge-a")]
    assert counts == {pacs_uid: 3, str(mine[0].StudyInstanceUID): 4}


def test_a_flood_of_bad_parts_is_a_few_audit_rows(settings: Settings, sessions: sessionmaker[Session],
                                                  bursts: BurstAuditor) -> None:
    configured = _settings(settings, dicomweb_max_body_bytes=2**20)
    body, content_type = encode_related([b"x"] * 10_000)
    assert 500_000 < len(body) < 2**20
    with admin_server(configured, sessions, bursts=bursts) as base:
        headers = {"Authorization": f"Bearer {login(base, 'edge-a', 'sender-pass')}", "Accept": DICOM_JSON}
        start = _last_audit_id(sessions)
        response = requests.post(f"{base}/dicomweb/studies", data=body, timeout=300,
                                 headers={**headers, "Content-Type": content_type})
        assert response.status_code == 409
        failed = Dataset.from_json(response.json()).FailedSOPSequence
        assert len(failed) == 10_000 and {int(i.FailureReason) for i in failed} == {0xC210}
        for _ in range(5):  # a flood of malformed requests
            malformed = requests.post(f"{base}/dicomweb/studies", data=body[:1000], timeout=30,
                                      headers={**headers, "Content-Type": content_type})
            assert malformed.status_code == 400
    bursts.flush(everything=True)

    rows = _rows(sessions, "instance_refused", after=start)
    assert _last_audit_id(sessions) - start == len(rows) <= 4
    counts: dict[str, int] = {}
    for _, detail in rows:
        counts[detail["status"]] = counts.get(detail["status"], 0) + detail["count"]
    assert counts == {"0xC210": 10_000, "HTTP 400": 5}


def test_of_two_senders_recorded_at_the_same_instant_the_owner_is_always_the_same(
    any_sessions: sessionmaker[Session],
) -> None:
    """Owner is the first sender; two recorded at one instant (two nodes' clocks, a coarse clock) are ordered
    by name, so every reader names the same owner."""
    at = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    with any_sessions.begin() as session:
        study = Study(study_uid="1.2.826.0.1.3680043.10.543.7", calling_ae="EDGE")
        session.add(study)
        session.flush()
        session.add_all([StudySender(study_id=study.id, user=user, at=at) for user in ("edge-b", "edge-a", "edge-c")])
    with any_sessions() as session:
        assert study_owner(session, "1.2.826.0.1.3680043.10.543.7") == "edge-a"
