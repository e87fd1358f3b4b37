"""Destinations as data: added through the API, echoed for real, and given the next results at once, each
destination's deliveries tracked on their own."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.auth import hash_password
from dicomnode.audit.models import AuditRecord
from dicomnode.db import session_scope
from dicomnode.inference.registry import load_manifests
from dicomnode.inference.volume import build_volume
from dicomnode.jobs.models import Delivery, Series, Study
from dicomnode.jobs.repository import ClaimedJob, enqueue
from dicomnode.pipeline import PipelineContext, deliver
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from dicomnode.settings import AdminUser, Settings
from tests.conftest import make_settings
from tests.support.admin import admin_server, call, login
from tests.support.net import free_port
from tests.support.peers import REPO, storescp

USERS = [AdminUser(name="boss", password_hash=hash_password("admin-pass", 1000)),
         AdminUser(name="eve", password_hash=hash_password("viewer-pass", 1000), role="viewer")]


@pytest.fixture
def result_files(tmp_path: Path) -> tuple[Path, ...]:
    from tests.support.synthetic import make_series

    manifest = load_manifests(REPO / "models")["deepbet"]
    volume = build_volume(make_series(n_slices=6, rows=8, columns=8))
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[1:4, 2:6, 2:6] = 1
    sources = sanitise_headers(volume.datasets)
    identity = ResultIdentity.for_job("1.2.3.4", 1, manifest)
    seg = build_seg(sources, labels, manifest, identity)
    sr = build_sr(seg, sources, segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest), manifest, identity)
    paths = (tmp_path / "seg.dcm", tmp_path / "sr.dcm")
    seg.save_as(paths[0])
    sr.save_as(paths[1])
    return paths


def _job(sessions: sessionmaker[Session]) -> ClaimedJob:
    with session_scope(sessions) as session:
        series = Series(series_uid="1.2.3.4.1", study=Study(study_uid="1.2.3.4", calling_ae="PACS"))
        session.add(series)
        session.flush()
        job = enqueue(session, series, "r", "deepbet", "1")
        assert job is not None
        return ClaimedJob(id=job.id, series_id=series.id, series_uid=series.series_uid, series_number=None,
                          study_uid="1.2.3.4", patient_id=None, patient_name=None, model_id="deepbet",
                          model_version="1", revision=1, attempts=1)


def _received(folder: Path) -> list[str]:
    return sorted(str(dcmread(p).Modality) for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[int]:
    with storescp(tmp_path / "pacs", aet="PACS") as port:
        yield port


def test_destination_added_at_run_time_gets_the_next_results(settings: Settings, sessions: sessionmaker[Session],
                                                             result_files: tuple[Path, ...], pacs: int,
                                                             tmp_path: Path) -> None:
    configured = make_settings(settings.data_dir, admin_port=free_port(), admin_users=USERS,
                               pacs=f"PACS@127.0.0.1:{pacs}")
    ctx = PipelineContext(settings=configured, sessions=sessions, registry=None)  # type: ignore[arg-type]
    job = _job(sessions)
    deliver(ctx, job, result_files)
    assert _received(tmp_path / "pacs") == ["SEG", "SR"]
    with storescp(tmp_path / "research", aet="RESEARCH") as port, admin_server(configured, sessions) as url:
        token = login(url, "boss", "admin-pass")
        status, body = call(url, "PUT", "/api/destinations/research",
                            {"ae_title": "RESEARCH", "port": port, "send": ["SEG"]}, token=token)
        assert status == 200 and body["send"] == ["SEG"]
        status, echoed = call(url, "POST", "/api/destinations/research/echo", token=token)
        assert status == 200 and echoed["ok"] is True and echoed["status"] == "0x0000" and echoed["rtt_ms"] > 0
        deliver(ctx, job, result_files)  # no restart: the next delivery reads the destinations afresh
    assert _received(tmp_path / "research") == ["SEG"]  # the research archive asked for the SEG only
    assert _received(tmp_path / "pacs") == ["SEG", "SR"]  # already stored there: not sent twice
    with sessions() as session:
        per_destination = sorted(session.scalars(select(Delivery.destination)))
    assert per_destination == [f"PACS@127.0.0.1:{pacs}"] * 2 + [f"RESEARCH@127.0.0.1:{port}"]


def test_destination_api_validation_roles_echo_and_audit(settings: Settings, sessions: sessionmaker[Session]) -> None:
    configured = make_settings(settings.data_dir, admin_port=free_port(), admin_users=USERS)
    with admin_server(configured, sessions) as url:
        viewer = login(url, "eve", "viewer-pass")
        assert call(url, "PUT", "/api/destinations/x", {"ae_title": "X"}, token=viewer)[0] == 403
        token = login(url, "boss", "admin-pass")
        for bad in ({"ae_title": "X", "send": ["PNG"]}, {"ae_title": "X", "send": []}, {"port": 104},
                    {"ae_title": "A" * 17}, {"ae_title": "X", "port": 0}, {"ae_title": "X", "colour": "red"}):
            assert call(url, "PUT", "/api/destinations/x", bad, token=token)[0] == 422, bad
        assert call(url, "PUT", "/api/destinations/pacs", {"ae_title": "X"}, token=token)[0] == 409
        closed = free_port()
        assert call(url, "PUT", "/api/destinations/gone", {"ae_title": "GONE", "port": closed}, token=token)[0] == 200
        status, echoed = call(url, "POST", "/api/destinations/gone/echo", token=token)
        assert status == 200 and echoed["ok"] is False
        assert echoed["rtt_ms"] >= 0 and echoed["rtt_ms"] == round(echoed["rtt_ms"], 1)  # to a tenth of a ms
        assert re.fullmatch(rf"no association: no connection to [\w.:]+:{closed}", echoed["status"]), echoed
        status, listing = call(url, "GET", "/api/destinations", token=viewer)
        assert status == 200 and [d["name"] for d in listing["stored"]] == ["gone"]
        assert call(url, "DELETE", "/api/destinations/gone", token=token)[0] == 204
        assert call(url, "DELETE", "/api/destinations/gone", token=token)[0] == 404
        assert call(url, "POST", "/api/destinations/gone/echo", token=token)[0] == 404
    with sessions() as session:
        changes = [json.loads(r.detail) for r in session.scalars(
            select(AuditRecord).where(AuditRecord.event == "config_changed"))]
    assert [(c["kind"], c["name"], c["before"] is None, c["after"] is None) for c in changes] == [
        ("destination", "gone", True, False), ("destination", "gone", False, True)]


def test_echo_a_peer_for_real(settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    configured = make_settings(settings.data_dir, admin_port=free_port(), admin_users=USERS)
    with storescp(tmp_path / "in", aet="MODALITY") as port, admin_server(configured, sessions) as url:
        token = login(url, "boss", "admin-pass")
        assert call(url, "POST", "/api/peers/MODALITY/echo", token=token)[0] == 404
        assert call(url, "PUT", "/api/peers/MODALITY", {"port": port}, token=token)[0] == 200
        status, echoed = call(url, "POST", "/api/peers/MODALITY/echo", token=token)
    assert status == 200 and echoed == {"target": f"MODALITY@127.0.0.1:{port}", "ok": True, "status": "0x0000",
                                        "rtt_ms": echoed["rtt_ms"]}


def test_a_rule_sends_its_results_only_where_it_says(settings: Settings, sessions: sessionmaker[Session],
                                                     result_files: tuple[Path, ...], pacs: int,
                                                     tmp_path: Path) -> None:
    from dicomnode.errors import SendError

    configured = make_settings(settings.data_dir, admin_port=free_port(), admin_users=USERS,
                               pacs=f"PACS@127.0.0.1:{pacs}")
    ctx = PipelineContext(settings=configured, sessions=sessions, registry=None)  # type: ignore[arg-type]
    job = _job(sessions)  # made by rule "r"
    with storescp(tmp_path / "research", aet="RESEARCH") as port, admin_server(configured, sessions) as url:
        token = login(url, "boss", "admin-pass")
        assert call(url, "PUT", "/api/destinations/research", {"ae_title": "RESEARCH", "port": port, "send": ["SEG"]},
                    token=token)[0] == 200
        status, rule = call(url, "PUT", "/api/rules/r", {"model": "deepbet", "destinations": ["research"]},
                            token=token)
        assert status == 200 and rule["destinations"] == ["research"]
        assert call(url, "PUT", "/api/rules/r2", {"model": "deepbet", "destinations": ["bad name!"]},
                    token=token)[0] == 422
        deliver(ctx, job, result_files)
        assert _received(tmp_path / "research") == ["SEG"]
        assert _received(tmp_path / "pacs") == []  # the rule does not name the PACS
        assert call(url, "PUT", "/api/rules/r", {"model": "deepbet", "destinations": ["nowhere"]},
                    token=token)[0] == 200
        with pytest.raises(SendError, match="no destination for rule r") as info:
            deliver(ctx, job, result_files)
    assert info.value.retryable is False
