"""Models that cannot run are not routed; demonstration models are routed only when the site turns them on.

- :meth:`Registry.check` marks a model whose file fails its SHA-256, or whose load fails, unavailable with
  its reason, and available again once its folder is fixed;
- the sweep gives a suspended model's rules no job (so no failure notice), and the study's and series'
  reasons say why, while the other models' rules get their jobs;
- ``/readyz``'s shape: degraded (still ready) while another model serves, not ready when none can;
- a demonstration model's default rule is not in force unless ``demo_models``; a rule naming one is
  suspended; its classification SR never says POSITIVE.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.app import start_admin
from dicomnode.admin.auth import hash_password
from dicomnode.admin.deps import AdminContext
from dicomnode.admin.health import readiness
from dicomnode.audit.models import AuditRecord
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.registry import DEMO_OFF, Registry, default_rules, load_manifests, suspended
from dicomnode.inference.result import ClassificationResult, ClassProbability
from dicomnode.inference.volume import check_usable
from dicomnode.jobs.models import Job, Series, Study
from dicomnode.jobs.status import StudyState
from dicomnode.results.classification import summary
from dicomnode.settings import AdminUser, Rule, Settings
from dicomnode.store.completion import InstalledModels, sweep
from tests.conftest import make_settings
from tests.support.admin import console_login, exchange
from tests.support.models import write_classifier, write_threshold_model
from tests.support.net import free_port
from tests.support.peers import REPO
from tests.unit.test_sweep import IDLE, quiet_for, receive_series


def _models(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    write_classifier(models)
    broken = write_threshold_model(models, 40.0, model_id="bad-sha", rule="mr-bad", description_re="T1")
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes() + b"\0")
    garbage = models / "no-load"
    write_threshold_model(models, 40.0, model_id="no-load", rule="mr-noload", description_re="T1")
    (garbage / "model.onnx").write_bytes(b"not an ONNX model")
    manifest = garbage / "manifest.toml"
    digest = hashlib.sha256(b"not an ONNX model").hexdigest()
    text = manifest.read_text()
    old = next(line for line in text.splitlines() if line.startswith("sha256"))
    manifest.write_text(text.replace(old, f'sha256 = "{digest}"'))
    return models


def test_a_wrong_checksum_or_a_failed_load_makes_a_model_unavailable_and_fixing_it_brings_it_back(
        tmp_path: Path) -> None:
    models = _models(tmp_path)
    registry = Registry(models, device="cpu")
    files_only = registry.check(load=False)
    assert set(files_only) == {"bad-sha"}  # without a load, only the checksum is judged
    assert files_only["bad-sha"].startswith("file model.onnx has SHA-256 ")
    unavailable = registry.check(load=True)
    assert set(unavailable) == {"bad-sha", "no-load"}
    assert registry.is_warm("region-classifier") and not registry.is_warm("bad-sha")
    write_threshold_model(models, 40.0, model_id="bad-sha", rule="mr-bad", description_re="T1")  # fixed
    assert set(Registry(models, device="cpu").check(load=True)) == {"no-load"}
    assert set(registry.check(load=True)) == {"no-load"}  # the same registry, checked again


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0), (2, 1, 0)])  # the good rule last, too
def test_the_sweep_suspends_an_unavailable_models_rules_and_the_study_says_why(
        sessions: sessionmaker[Session], tmp_path: Path, order: tuple[int, int, int]) -> None:
    """A suspended rule, or one naming a model not installed, gives no job and says so; the series' other
    rules still give theirs, in whichever order the rules are listed."""
    receive_series(sessions, tmp_path / "spool")
    named = [Rule(name="mr-good", model="good", match={"Modality": "^MR$"}),
             Rule(name="mr-bad", model="bad", match={"Modality": "^MR$"}),
             Rule(name="mr-none", model="none", match={"Modality": "^MR$"})]
    rules = [named[i] for i in order]
    why = "model bad unavailable: file model.onnx has SHA-256 0123, the manifest says 4567"
    installed = InstalledModels({"good": "1", "bad": "1"}, check_usable, {"bad": why})
    quiet_for(sessions, IDLE + 1)
    assert sweep(sessions, IDLE, rules, installed) == 1
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.state == StudyState.ROUTED
        assert study.state_reason == f"routed: 1 job(s); {why}"
        assert [j.model_id for j in session.scalars(select(Job))] == ["good"]
        (series,) = session.scalars(select(Series))
        assert f"; rule mr-bad suspended: {why}" in series.route_reason
        assert "; rule mr-none names unknown model 'none'" in series.route_reason


def test_a_study_that_only_a_suspended_model_matches_gets_no_job_and_its_reason(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    receive_series(sessions, tmp_path / "spool")
    why = "model bad unavailable: file model.onnx is missing (/x)"
    installed = InstalledModels({"bad": "1"}, check_usable, {"bad": why})
    quiet_for(sessions, IDLE + 1)
    sweep(sessions, IDLE, [Rule(name="mr-bad", model="bad", match={"Modality": "^MR$"})], installed)
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.state == StudyState.NO_MATCH and why in study.state_reason
        assert session.scalars(select(Job)).all() == []
        (row,) = session.scalars(select(AuditRecord).where(AuditRecord.event == "study_not_routed"))
        assert why in json.loads(row.detail)["reason"]


def test_readyz_is_degraded_not_down_while_another_model_serves(settings: Settings,
                                                                 sessions: sessionmaker[Session]) -> None:
    settings = settings.model_copy(update={"min_free_disk_mb": 0.0})
    why = {"bad": "file model.onnx has SHA-256 0123, the manifest says 4567"}
    ready = readiness(settings, sessions, ("bad", "good"), why)
    assert ready.ready and ready.degraded and ready.unavailable == why
    assert ready.checks["models"].ok
    assert ready.checks["models"].detail == f"loaded: good; model bad unavailable: {why['bad']}"
    down = readiness(settings, sessions, ("bad",), why)
    assert not down.ready and not down.degraded and not down.checks["models"].ok
    assert why["bad"] in down.checks["models"].detail
    whole = readiness(settings, sessions, ("good",), {})
    assert whole.ready and not whole.degraded and whole.model_dump().keys() >= {"ready", "checks"}


def test_demonstration_models_are_off_by_default() -> None:
    manifests = load_manifests(REPO / "models")
    demos = {m.id for m in manifests.values() if m.demonstration}
    assert demos == {"cxr-demo", "ct-nodule-demo"}  # deepbet is a real published model, not a demonstration
    assert Settings().demo_models is False
    assert {r.model for r in default_rules(manifests, demo_models=False)} == {"deepbet"}
    assert {r.model for r in default_rules(manifests, demo_models=True)} == set(manifests)
    off = suspended(manifests, {}, demo_models=False)
    assert off == {m: f"model {m} {DEMO_OFF}" for m in demos}
    assert suspended(manifests, {}, demo_models=True) == {}


def test_the_environment_turns_demonstrations_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_DEMO_MODELS", "true")
    assert Settings().demo_models is True


def test_a_demonstration_classifier_never_says_positive() -> None:
    manifest = Manifest.read(REPO / "models" / "cxr-demo" / "manifest.toml")
    spec = manifest.output.classes[0]
    present = ClassificationResult(classes=(ClassProbability(spec, 0.99),))
    absent = ClassificationResult(classes=(ClassProbability(spec, 0.01),))
    assert summary(present, demonstration=True) == f"DEMO present: {spec.label}"
    assert summary(absent, demonstration=True) == "DEMO negative"
    assert summary(present) == f"POSITIVE {spec.label}"  # a site model's findings still sort a worklist
    other = spec.model_copy(update={"label": "Effusion"})
    both = ClassificationResult(classes=(ClassProbability(spec, 0.99), ClassProbability(other, 0.98)))
    assert summary(both) == f"POSITIVE {spec.label}, Effusion"
    assert summary(both, demonstration=True) == f"DEMO present: {spec.label}, Effusion"


def test_the_console_dashboard_lists_each_model_with_its_routing_state(settings: Settings,
                                                                        sessions: sessionmaker[Session],
                                                                        tmp_path: Path) -> None:
    models = _models(tmp_path)
    shutil.copytree(REPO / "models" / "cxr-demo", models / "cxr-demo")
    users = [AdminUser(name="viewer", password_hash=hash_password("view-pass", 1000), role="viewer")]
    configured = make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=users,
                               models_dir=models)
    why = {"bad-sha": "file model.onnx has SHA-256 0123, the manifest says 4567"}
    server = start_admin(AdminContext(configured, sessions, models=tuple(load_manifests(models)), unavailable=why))
    try:
        base = f"http://127.0.0.1:{server.port}"
        cookie = console_login(base, "viewer", "view-pass")
        page = exchange(base, "GET", "/ui/", {"Cookie": f"dicomnode_session={cookie}"}).text
    finally:
        server.shutdown()
        server.server_close()
    assert "ready, degraded" in page
    rows = {cells[0]: cells[1:] for cells in (re.findall(r"<td[^>]*>(.*?)</td>", row) for row in
            page.split('<table id="models">')[1].split("</table>")[0].split("<tr>")) if cells}
    assert rows["bad-sha"][2:] == ["unavailable", f"model bad-sha unavailable: {why['bad-sha']}"]
    assert rows["cxr-demo"][2] == "off" and DEMO_OFF in html.unescape(rows["cxr-demo"][3])
    assert rows["region-classifier"][2:] == ["routed", ""]
