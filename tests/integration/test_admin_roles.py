"""The admin API's roles, token expiry, readiness, OpenAPI, metrics and job operations, over a real socket."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.auth import hash_password
from dicomnode.audit.models import AuditRecord
from dicomnode.db import session_scope
from dicomnode.jobs.models import Job, Series, Study
from dicomnode.jobs.repository import claim, enqueue, transition
from dicomnode.jobs.status import JobStatus
from dicomnode.settings import AdminUser, Settings
from tests.conftest import make_settings
from tests.support.admin import admin_server, call, login
from tests.support.net import free_port, wait_for
from tests.support.trail import audit_rows

USERS = [AdminUser(name="boss", password_hash=hash_password("admin-pass", 1000), role="admin"),
         AdminUser(name="eve", password_hash=hash_password("viewer-pass", 1000), role="viewer")]
NAME, PID = "Doe^Jane", "PID-4711"


@pytest.fixture
def configured(settings: Settings) -> Settings:
    return make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=USERS)


@pytest.fixture
def base(configured: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    with admin_server(configured, sessions, models=("deepbet",)) as url:
        yield url


def _study_with_jobs(sessions: sessionmaker[Session]) -> tuple[int, int]:
    """A study of a named patient with two jobs: one dead-lettered, one queued."""
    with session_scope(sessions) as session:
        study = Study(study_uid="1.2.3", calling_ae="PACS", patient_name=NAME, patient_id=PID)
        series = [Series(series_uid=f"1.2.3.{i}", study=study) for i in range(2)]
        session.add_all(series)
        session.flush()
        dead = enqueue(session, series[0], "r", "deepbet", "1")
        queued = enqueue(session, series[1], "r", "deepbet", "1")
        assert dead is not None and queued is not None
        dead_id, queued_id = dead.id, queued.id
    held = claim(sessions, "w1", 60)
    assert held is not None and held.id == dead_id
    with session_scope(sessions) as session:
        transition(session, dead_id, JobStatus.RUNNING, JobStatus.DEAD_LETTER, "association rejected",
                   worker_id="w1")
    return dead_id, queued_id


def test_viewer_reads_masked_and_changes_nothing(base: str, sessions: sessionmaker[Session]) -> None:
    dead_id, queued_id = _study_with_jobs(sessions)
    token = login(base, "eve", "viewer-pass")
    for path in ("/api/studies", "/api/studies/1.2.3", "/api/jobs", f"/api/jobs/{dead_id}", "/api/peers",
                 "/api/rules"):
        status, body = call(base, "GET", path, token=token)
        assert status == 200, path
        assert NAME not in json.dumps(body) and PID not in json.dumps(body), path
    _, study = call(base, "GET", "/api/studies/1.2.3", token=token)
    assert study["patient_name"] == "***" and study["patient_id"] == "***"
    for method, path, body in (("PUT", "/api/peers/MOD1", {"port": 104}), ("DELETE", "/api/peers/MOD1", None),
                               ("PUT", "/api/rules/r", {"model": "deepbet"}), ("DELETE", "/api/rules/r", None),
                               ("POST", f"/api/jobs/{dead_id}/retry", None),
                               ("POST", f"/api/jobs/{queued_id}/cancel", None)):
        assert call(base, method, path, body, token=token) == (403, {
            "detail": "the viewer role may not change anything"}), path
    assert audit_rows(sessions, "config_changed") == [] and audit_rows(sessions, "instances_accessed") == []
    with sessions() as session:
        assert session.get(Job, dead_id).status is JobStatus.DEAD_LETTER  # type: ignore[union-attr]


def test_admin_sees_phi_and_each_view_is_audited(base: str, sessions: sessionmaker[Session]) -> None:
    _study_with_jobs(sessions)
    token = login(base, "boss", "admin-pass")
    status, study = call(base, "GET", "/api/studies/1.2.3", token=token)
    assert status == 200 and study["patient_name"] == NAME and study["patient_id"] == PID
    assert [e["event"] for e in study["timeline"]][:1] == ["job_queued"]
    (row,) = audit_rows(sessions, "instances_accessed")
    assert (row.actor, row.study_uid, row.patient_id, row.patient_name) == ("boss", "1.2.3", PID, NAME)
    assert json.loads(row.detail)["reason"] == "study viewed in the admin API"
    status, listing = call(base, "GET", "/api/studies", token=token)
    (row,) = listing["studies"]  # the answer to "why is this study still waiting?"
    assert (row["study_uid"], row["state"], row["reason"], row["calling_ae"]) == ("1.2.3", "receiving", "", "PACS")
    assert [(j["model"], j["status"], j["reason"]) for j in row["jobs"]] == [
        ("deepbet", "dead_letter", "association rejected"), ("deepbet", "queued", "")]
    assert [(s["series_uid"], s["instances"]) for s in row["series"]] == [("1.2.3.0", 0), ("1.2.3.1", 0)]
    listed = audit_rows(sessions, "instances_accessed")[1:]
    assert [(r.study_uid, r.patient_id, json.loads(r.detail)["reason"]) for r in listed] == [
        ("1.2.3", PID, "study list viewed in the admin API")]


def test_retry_and_cancel_are_audited_with_the_operator(base: str, sessions: sessionmaker[Session]) -> None:
    dead_id, queued_id = _study_with_jobs(sessions)
    token = login(base, "boss", "admin-pass")
    status, body = call(base, "GET", "/api/jobs?state=dead_letter", token=token)
    assert status == 200 and [j["id"] for j in body] == [dead_id]
    assert call(base, "GET", "/api/jobs?state=exploded", token=token)[0] == 422
    status, job = call(base, "POST", f"/api/jobs/{dead_id}/retry", token=token)
    assert status == 200 and job["status"] == "queued" and "boss" in job["reason"]
    assert call(base, "POST", f"/api/jobs/{dead_id}/retry", token=token)[0] == 409  # not dead-lettered now
    status, job = call(base, "POST", f"/api/jobs/{queued_id}/cancel", token=token)
    assert status == 200 and job["status"] == "dead_letter"
    assert call(base, "POST", "/api/jobs/999/cancel", token=token)[0] == 404
    requeued = [r for r in audit_rows(sessions, "job_requeued") if r.actor == "boss"]
    failed = [r for r in audit_rows(sessions, "job_failed") if r.actor == "boss"]
    assert len(requeued) == 1 and len(failed) == 1
    assert "cancelled by operator boss" in json.loads(failed[0].detail)["reason"]


def test_tokens_expire(configured: Settings, sessions: sessionmaker[Session]) -> None:
    short = configured.model_copy(update={"admin_session_minutes": 0.02})  # 1.2 s
    with admin_server(short, sessions) as url:
        token = login(url, "eve", "viewer-pass")
        assert call(url, "GET", "/api/peers", token=token)[0] == 200
        wait_for(lambda: call(url, "GET", "/api/peers", token=token)[0] == 401, timeout=10, msg="token expired")
    with sessions() as session:  # stored hashed: the token itself is nowhere in the database
        assert all(token not in (r.detail or "") for r in session.scalars(select(AuditRecord)))


def test_unknown_token_and_removed_user_get_401(base: str) -> None:
    assert call(base, "GET", "/api/jobs", token="not-a-token")[0] == 401
    assert call(base, "GET", "/api/jobs")[0] == 401


def test_readiness_has_per_check_detail(configured: Settings, sessions: sessionmaker[Session]) -> None:
    with admin_server(configured, sessions, models=("deepbet",)) as url:
        status, body = call(url, "GET", "/readyz")
        assert status == 200 and body["ready"] is True
        assert set(body["checks"]) == {"database", "spool", "disk", "models"}
        assert "deepbet" in body["checks"]["models"]["detail"]
    full = configured.model_copy(update={"min_free_disk_mb": 1e12})
    with admin_server(full, sessions, models=()) as url:
        status, body = call(url, "GET", "/readyz")
        assert status == 503 and body["ready"] is False
        assert body["checks"]["disk"]["ok"] is False and body["checks"]["models"]["ok"] is False
        assert body["checks"]["database"]["ok"] is True
        assert call(url, "GET", "/healthz")[0] == 200  # liveness: the process answers


def test_spool_not_writable_is_not_ready(configured: Settings, sessions: sessionmaker[Session]) -> None:
    configured.spool_dir.rmdir() if configured.spool_dir.is_dir() else None
    configured.spool_dir.write_bytes(b"")  # a file where the spool should be: nothing can be written there
    with admin_server(configured, sessions, models=("deepbet",)) as url:
        status, body = call(url, "GET", "/readyz")
    assert status == 503 and body["checks"]["spool"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_openapi_lists_every_route(base: str) -> None:
    status, doc = call(base, "GET", "/openapi.json")
    assert status == 200
    assert {"/api/login", "/api/logout", "/api/studies", "/api/studies/{study_uid}", "/api/jobs",
            "/api/jobs/{job_id}/retry", "/api/jobs/{job_id}/cancel", "/api/peers/{ae_title}", "/api/rules/{name}",
            "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])


def test_every_metrics_sample_parses(base: str, sessions: sessionmaker[Session]) -> None:
    _study_with_jobs(sessions)
    status, text = call(base, "GET", "/metrics")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("dicomnode_jobs", (("status", "dead_letter"),))] == 1
    assert samples[("dicomnode_jobs", (("status", "queued"),))] == 1
    assert samples[("dicomnode_studies", (("state", "receiving"),))] == 1
    login(base, "eve", "viewer-pass")
    _, text = call(base, "GET", "/metrics")
    after = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(text) for s in family.samples}
    assert after[("dicomnode_admin_logins_total", (("outcome", "success"),))] == 1
    assert after[("dicomnode_audit_rows_total", ())] > samples[("dicomnode_audit_rows_total", ())]
