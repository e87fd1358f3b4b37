"""DICOMweb with a real client (dicomweb-client, from the highdicom authors) over a real loopback socket:
STOW-RS lands instances as C-STORE does; QIDO-RS and WADO-RS serve the SEG and SR; bad input stores nothing."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.auth import hash_password
from dicomnode.audit.models import AuditRecord
from dicomnode.db import session_scope
from dicomnode.inference.registry import load_manifests
from dicomnode.jobs.models import Instance, Series
from dicomnode.jobs.repository import enqueue
from dicomnode.net.multipart import encode_related
from dicomnode.results.files import write_results
from dicomnode.results.sr import build_sr
from dicomnode.settings import AdminUser, Settings
from tests.conftest import make_settings
from tests.support.admin import admin_server, call, login
from tests.support.net import free_port
from tests.support.peers import REPO, dciodvfy, sr_validator
from tests.support.results import box_seg
from tests.support.synthetic import make_series

USERS = [AdminUser(name="boss", password_hash=hash_password("admin-pass", 1000), role="admin"),
         AdminUser(name="eve", password_hash=hash_password("viewer-pass", 1000), role="viewer"),
         AdminUser(name="edge-a", password_hash=hash_password("sender-pass", 1000), role="sender"),
         AdminUser(name="edge-b", password_hash=hash_password("other-pass", 1000), role="sender")]
MAX_BODY = 64 * 1024


def _settings(settings: Settings, **overrides: object) -> Settings:
    values: dict[str, object] = {"admin_port": free_port(), "min_free_disk_mb": 1, "admin_users": USERS,
                                 "dicomweb_max_body_bytes": MAX_BODY, **overrides}
    return make_settings(settings.data_dir, **values)


@pytest.fixture
def configured(settings: Settings) -> Settings:
    return _settings(settings)


@pytest.fixture
def base(configured: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    with admin_server(configured, sessions) as url:
        yield url


def _client(base: str, token: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{base}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def _series(n: int = 6) -> list[Dataset]:
    return make_series(n_slices=n, rows=16, columns=12, patient_name="WEB^PATIENT", patient_id="WEB-77")


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _instances(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def _spooled(settings: Settings) -> list[Path]:
    return [p for p in settings.spool_dir.rglob("*") if p.is_file()] if settings.spool_dir.exists() else []


def _post(base: str, token: str, body: bytes, content_type: str, path: str = "/dicomweb/studies") -> tuple[int, object]:
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    return call(base, "POST", path, token=token, raw=body, headers=headers)


def _write_results(settings: Settings, sessions: sessionmaker[Session], series: list[Dataset]) -> None:
    """SEG and SR for the stored series, written where and as the pipeline writes them."""
    manifest = load_manifests(REPO / "models")["deepbet"]
    made = box_seg(manifest, series, slices=slice(1, 5))
    seg, volumes = made.seg, made.volumes
    sr = build_sr(seg, made.sources, volumes, manifest, made.identity)
    with session_scope(sessions) as session:
        row = session.scalar(select(Series).where(Series.series_uid == str(series[0].SeriesInstanceUID)))
        job = enqueue(session, row, "rule", "deepbet", manifest.version)
        assert job is not None
        job_id = job.id
    write_results(settings.results_dir, job_id, [seg, sr], {f"segment {n}": ml for n, ml in volumes.items()}, 0.1,
                  "test results")


def test_stow_search_and_retrieve_results(base: str, configured: Settings, sessions: sessionmaker[Session],
                                          tmp_path: Path) -> None:
    series = _series()
    study_uid = str(series[0].StudyInstanceUID)
    client = _client(base, login(base, "edge-a", "sender-pass"))
    answer = client.store_instances(series)
    assert len(answer.ReferencedSOPSequence) == len(series) and "FailedSOPSequence" not in answer
    assert _instances(sessions) == len(series) and len(_spooled(configured)) == len(series)
    assert client.store_instances(series[:2]).ReferencedSOPSequence  # a re-send deduplicates
    assert _instances(sessions) == len(series)
    with sessions() as session:  # one receipt row per request and study, as C-STORE's per association
        rows = list(session.scalars(select(AuditRecord).where(AuditRecord.event.in_(
            ("instance_received", "instances_received"))).order_by(AuditRecord.id)))
    assert [(r.event, r.actor, r.study_uid) for r in rows] == [("instances_received", "edge-a", study_uid)] * 2
    assert [(json.loads(r.detail)["instances"], json.loads(r.detail)["unchanged"]) for r in rows] == [
        (len(series), 0), (2, 2)]

    _write_results(configured, sessions, series)
    found: dict[str, Path] = {}
    for modality in ("SEG", "SR"):
        (hit,) = client.search_for_series(study_uid, search_filters={"Modality": modality})
        series_uid = hit["0020000E"]["Value"][0]
        (instance,) = client.search_for_instances(study_uid, series_uid)
        sop_uid = instance["00080018"]["Value"][0]
        ds = client.retrieve_instance(study_uid, series_uid, sop_uid)
        assert ds.Modality == modality and ds.StudyInstanceUID == study_uid
        found[modality] = tmp_path / f"{modality}.dcm"
        ds.save_as(found[modality], enforce_file_format=True)
        assert len(client.retrieve_series(study_uid, series_uid)) == 1
    assert dciodvfy(found["SEG"])[0] == [] and dciodvfy(found["SR"])[0] == []
    assert sr_validator(found["SR"])[0] == []
    sources = {str(ds.SOPInstanceUID) for ds in series}
    seg = dcmread(found["SEG"])
    assert {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == sources

    other = _client(base, login(base, "edge-b", "other-pass"))
    with pytest.raises(requests.HTTPError, match="404"):
        other.search_for_series(study_uid)
    admin = _client(base, login(base, "boss", "admin-pass"))
    assert len(admin.search_for_series(study_uid)) == 2


def test_sender_may_not_administer(base: str) -> None:
    token = login(base, "edge-a", "sender-pass")
    for method, path in (("GET", "/api/studies"), ("GET", "/api/jobs"), ("PUT", "/api/peers/X")):
        assert call(base, method, path, {"port": 104}, token=token)[0] == 403, path


def test_each_instance_gets_its_own_status(base: str, configured: Settings, sessions: sessionmaker[Session]
                                           ) -> None:
    token = login(base, "edge-a", "sender-pass")
    good, cut, other_study = _series(3)
    other_study.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    body, ctype = encode_related([_part10(good), _part10(cut)[:-60], _part10(other_study)])
    status, answer = _post(base, token, body, ctype, f"/dicomweb/studies/{good.StudyInstanceUID}")
    assert status == 202, answer
    response = Dataset.from_json(json.dumps(answer))
    assert [str(i.ReferencedSOPInstanceUID) for i in response.ReferencedSOPSequence] == [str(good.SOPInstanceUID)]
    assert sorted(int(i.FailureReason) for i in response.FailedSOPSequence) == [0xC210, 0xC212]
    assert _instances(sessions) == 1


def test_disk_guard_and_collision_refuse_every_instance(settings: Settings, sessions: sessionmaker[Session]
                                                       ) -> None:
    series = _series(2)
    with admin_server(_settings(settings, min_free_disk_mb=1e12), sessions) as url:
        body, ctype = encode_related([_part10(ds) for ds in series])
        status, answer = _post(url, login(url, "edge-a", "sender-pass"), body, ctype)
        assert status == 409, answer
        assert {int(i.FailureReason) for i in Dataset.from_json(json.dumps(answer)).FailedSOPSequence} == {0xA700}
    with admin_server(_settings(settings), sessions) as url:
        token = login(url, "edge-a", "sender-pass")
        assert _post(url, token, *encode_related([_part10(series[0])]))[0] == 200
        series[1].PatientID = "SOMEONE-ELSE"  # same study UID, another patient: a collision
        status, answer = _post(url, token, *encode_related([_part10(series[1])]))
        assert status == 409 and Dataset.from_json(json.dumps(answer)).FailedSOPSequence[0].FailureReason == 0xC213
    assert _instances(sessions) == 1


@pytest.mark.parametrize(("case", "expected"), [
    ("truncated", 400), ("no closing boundary", 400), ("json", 415), ("jpeg part", 415), ("oversize", 413),
    ("unknown token", 401), ("viewer", 403), ("no boundary", 400),
])
def test_bad_requests_store_nothing(base: str, configured: Settings, sessions: sessionmaker[Session], case: str,
                                    expected: int) -> None:
    series = _series(3)
    body, ctype = encode_related([_part10(ds) for ds in series])
    token = login(base, "eve", "viewer-pass") if case == "viewer" else \
        "not-a-token" if case == "unknown token" else login(base, "edge-a", "sender-pass")
    if case == "truncated":
        body = body[: len(body) // 2]
    elif case == "no closing boundary":
        body = body[: body.rindex(b"--dicomnode")]
    elif case == "json":
        ctype = "application/json"
    elif case == "jpeg part":
        body = body.replace(b"Content-Type: application/dicom", b"Content-Type: image/jpeg", 1)
    elif case == "oversize":
        body = encode_related([_part10(ds) for ds in _series(60)])[0]
        assert len(body) > MAX_BODY
    elif case == "no boundary":
        ctype = 'multipart/related; type="application/dicom"'
    status, _ = _post(base, token, body, ctype)
    assert status == expected
    assert _instances(sessions) == 0 and _spooled(configured) == []


@contextmanager
def _upload_begun(configured: Settings, sessions: sessionmaker[Session]
                  ) -> Iterator[tuple[socket.socket, bytes, float]]:
    """A STOW-RS request of two instances whose headers and first 100 bytes of body are sent, on a connection
    of its own: the socket, the whole body, and when the sending began."""
    body, ctype = encode_related([_part10(ds) for ds in _series(2)])
    with admin_server(configured, sessions) as url:
        token = login(url, "edge-a", "sender-pass")
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            started = time.monotonic()
            sock.sendall(f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:100])
            yield sock, body, started


def test_a_stalled_upload_is_cut_at_the_dicomweb_deadline(settings: Settings, sessions: sessionmaker[Session]
                                                          ) -> None:
    configured = _settings(settings, admin_request_timeout_seconds=0.5, dicomweb_request_timeout_seconds=2.0)
    with _upload_begun(configured, sessions) as (sock, _, started):
        assert sock.recv(1024) == b""  # closed by the server, without an answer
        elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 20  # the upload's own deadline, not admin_request_timeout_seconds
    assert _instances(sessions) == 0 and _spooled(configured) == []


def test_a_trickled_upload_is_cut_at_the_dicomweb_deadline_too(settings: Settings, sessions: sessionmaker[Session]
                                                               ) -> None:
    """A client that keeps sending a few bytes does not renew the deadline: the whole request must arrive
    within `dicomweb_request_timeout_seconds` (a slow-drip client holds a slot no longer than a stalled one)."""
    configured = _settings(settings, admin_request_timeout_seconds=0.5, dicomweb_request_timeout_seconds=2.0)
    with _upload_begun(configured, sessions) as (sock, body, started):
        sent, closed = 100, False
        sock.settimeout(0.2)
        while not closed and time.monotonic() - started < 30:
            try:
                closed = sock.recv(1024) == b""  # closed by the server, without an answer
            except TimeoutError:  # still open: 16 more bytes
                try:
                    sock.sendall(body[sent:sent + 16])
                    sent += 16
                except OSError:  # reset by the server
                    closed = True
        elapsed = time.monotonic() - started
    assert closed and 1.5 < elapsed < 20 and sent < len(body)
    assert _instances(sessions) == 0 and _spooled(configured) == []
