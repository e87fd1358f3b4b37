"""Issue 22, findings 7 and 9: input that should be refused is refused at every door (the admin API over
real HTTP, the console in real headless Chromium, the CLI as a process) and nothing is stored; and rule
patterns are matched by RE2, so that a series described to stall a backtracking matcher does not delay
the routing of another study."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.auth import hash_password
from dicomnode.admin.console import MAX_UPLOAD_FILES
from dicomnode.admin.schemas import JOB_ID_MAX
from dicomnode.audit.models import AuditRecord
from dicomnode.config_store import runtime_rules
from dicomnode.db import session_scope
from dicomnode.inference.registry import load_manifests
from dicomnode.inference.volume import check_usable
from dicomnode.jobs.models import DestinationConfig, PeerConfig, RuleConfig, Study
from dicomnode.jobs.status import StudyState
from dicomnode.settings import AdminUser, Settings
from dicomnode.store.completion import HeaderCache, InstalledModels, sweep
from dicomnode.store.index import InstanceMeta, record_instance
from tests.conftest import make_settings
from tests.integration.test_admin_roles import _study_with_jobs
from tests.integration.test_cli import cli, one_sentence
from tests.support.admin import admin_server, call, chromium, login
from tests.support.net import free_port, wait_for
from tests.support.peers import REPO
from tests.support.synthetic import make_series, write_series

USERS = [AdminUser(name="boss", password_hash=hash_password("admin-pass-1", 1000))]
BAD_HOSTS = ["127.0.0.1\x00../../x", "a\nb", "../../etc/passwd"]
PATH_NAME = "x/../../peers/PEERZ"
HUGE_JOB = "99999999999999999999999"


@pytest.fixture
def node_settings(settings: Settings) -> Settings:
    return make_settings(settings.data_dir, admin_port=free_port(), min_free_disk_mb=1, admin_users=USERS,
                         study_idle_seconds=0.5)


@pytest.fixture
def base(node_settings: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    with admin_server(node_settings, sessions) as url:
        yield url


def stored(sessions: sessionmaker[Session]) -> dict[str, list[str]]:
    with sessions() as session:
        return {"peers": list(session.scalars(select(PeerConfig.ae_title))),
                "rules": list(session.scalars(select(RuleConfig.name))),
                "destinations": list(session.scalars(select(DestinationConfig.name))),
                "changes": list(session.scalars(select(AuditRecord.id).where(AuditRecord.event == "config_changed")))}


NOTHING: dict[str, list[str]] = {"peers": [], "rules": [], "destinations": [], "changes": []}


# -- the admin API ----------------------------------------------------------------------------------
@pytest.mark.parametrize("host", BAD_HOSTS)
def test_api_refuses_a_peer_host_that_is_no_address_network_or_name(base: str, sessions: sessionmaker[Session],
                                                                    host: str) -> None:
    status, body = call(base, "PUT", "/api/peers/PEERX", {"host": host}, token=login(base, "boss", "admin-pass-1"))
    assert status == 422 and "must be an IP address, a network" in str(body), (status, body)
    assert stored(sessions) == NOTHING


@pytest.mark.parametrize("host", ["10.0.0.0/8", "*", *BAD_HOSTS])
def test_api_refuses_a_destination_host_it_cannot_dial(base: str, sessions: sessionmaker[Session], host: str) -> None:
    token = login(base, "boss", "admin-pass-1")
    status, body = call(base, "PUT", "/api/destinations/archive", {"ae_title": "ARCHIVE", "host": host}, token=token)
    assert status == 422 and "must be an IP address or a host name" in str(body), (status, body)
    assert stored(sessions) == NOTHING


def test_api_does_not_call_a_peer_that_is_a_network(base: str, sessions: sessionmaker[Session]) -> None:
    token = login(base, "boss", "admin-pass-1")
    assert call(base, "PUT", "/api/peers/MODALITIES", {"host": "10.1.0.0/16"}, token=token)[0] == 200
    status, body = call(base, "POST", "/api/peers/MODALITIES/echo", token=token)
    assert status == 409 and "cannot be called" in body["detail"], (status, body)


@pytest.mark.parametrize("path", ["/api/rules/..", "/api/rules/.hidden", "/api/rules/a..b"])
def test_api_refuses_a_rule_name_that_is_not_a_slug(base: str, sessions: sessionmaker[Session], path: str) -> None:
    status, body = call(base, "PUT", path, {"model": "deepbet"}, token=login(base, "boss", "admin-pass-1"))
    assert status == 422 and "must be 1 to 64 letters" in str(body), (status, body)
    assert stored(sessions) == NOTHING


def test_api_has_no_route_for_a_rule_name_with_slashes(base: str, sessions: sessionmaker[Session]) -> None:
    encoded = PATH_NAME.replace("/", "%2F")
    status, _ = call(base, "PUT", f"/api/rules/{encoded}", {"model": "deepbet"}, token=login(base, "boss",
                                                                                            "admin-pass-1"))
    assert status == 404
    assert stored(sessions) == NOTHING


def test_api_refuses_a_rule_for_a_model_not_installed_unless_told(base: str, sessions: sessionmaker[Session]) -> None:
    token = login(base, "boss", "admin-pass-1")
    status, body = call(base, "PUT", "/api/rules/future", {"model": "nosuchmodel"}, token=token)
    assert status == 422, (status, body)
    assert body["detail"].startswith("rule future names model nosuchmodel, which is not installed (installed: ")
    assert "deepbet" in body["detail"] and "model_not_installed_ok" in body["detail"]
    assert stored(sessions) == NOTHING
    status, body = call(base, "PUT", "/api/rules/future", {"model": "nosuchmodel", "model_not_installed_ok": True},
                        token=token)
    assert status == 200 and body == {"name": "future", "model": "nosuchmodel", "match": {}}
    assert stored(sessions)["rules"] == ["future"]
    status, body = call(base, "GET", "/api/rules", token=token)  # saved, and said to give no job yet
    assert body["stored"][0]["state"] == "gives no job: names unknown model 'nosuchmodel'"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"/api/jobs/{HUGE_JOB}"), ("POST", f"/api/jobs/{HUGE_JOB}/retry"), ("POST", f"/api/jobs/{HUGE_JOB}/cancel"),
    ("GET", "/api/jobs/0"), ("GET", "/api/jobs/-1"), ("GET", f"/api/jobs/{2**63 - 1}"), ("GET", f"/api/jobs/{2**63}"),
])
def test_api_answers_an_out_of_range_job_id_with_no_such_job(base: str, method: str, path: str) -> None:
    status, body = call(base, method, path, token=login(base, "boss", "admin-pass-1"))
    assert (status, body) == (404, {"detail": "no such job"})


def test_a_row_stored_before_the_checks_is_ignored_and_can_be_removed(base: str,
                                                                    sessions: sessionmaker[Session]) -> None:
    """A peer stored by an earlier version with host ``a\\nb`` is not in force and breaks no listing."""
    with session_scope(sessions) as session:
        session.add(PeerConfig(ae_title="EVIL", host="a\nb", port=104, tls=False))
        session.add(RuleConfig(name=PATH_NAME, model="deepbet", match="{}", destinations="[]"))
    token = login(base, "boss", "admin-pass-1")
    status, body = call(base, "GET", "/api/peers", token=token)
    assert status == 200 and body["stored"] == []
    status, body = call(base, "GET", "/api/rules", token=token)
    assert status == 200 and body["stored"] == []
    assert call(base, "DELETE", "/api/peers/EVIL", token=token)[0] == 204
    assert stored(sessions)["peers"] == []


def test_api_refuses_a_pattern_only_backtracking_can_match(base: str, sessions: sessionmaker[Session]) -> None:
    status, body = call(base, "PUT", "/api/rules/twice", {"model": "deepbet", "match": {
        "SeriesDescription": r"(T1)\1"}}, token=login(base, "boss", "admin-pass-1"))
    assert status == 422 and "SeriesDescription uses a back-reference, which cannot be matched in linear time" in str(
        body), (status, body)
    assert stored(sessions) == NOTHING


def test_api_accepts_a_polynomial_pattern_and_a_study_routes_on_time_beside_its_victim(
        base: str, node_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """Measured before RE2: a series described with 20 a's held the sweep for seconds on ``a*a*...c``."""
    token = login(base, "boss", "admin-pass-1")
    status, body = call(base, "PUT", "/api/rules/slow", {"model": "deepbet", "match": {
        "SeriesDescription": "a*" * 12 + "c"}}, token=token)
    assert status == 200, body
    status, _ = call(base, "PUT", "/api/rules/mr", {"model": "deepbet", "match": {"Modality": "^MR$"}}, token=token)
    assert status == 200
    manifests = load_manifests(REPO / "models")
    rules = runtime_rules(node_settings, sessions, ())
    models = InstalledModels({m.id: m.version for m in manifests.values()}, check_usable)
    stop = threading.Event()

    def sweeping() -> None:  # as the node's scheduler runs it
        while not stop.is_set():
            sweep(sessions, node_settings.study_idle_seconds, rules, models, HeaderCache(), wait_seconds=0.25)
            stop.wait(0.25)

    land(sessions, tmp_path / "victim", "a" * 22)  # first: judged first, in the same sweep as the other
    other = land(sessions, tmp_path / "other", "T1 3D sag")
    thread = threading.Thread(target=sweeping, daemon=True)
    thread.start()
    try:
        wait_for(lambda: state(sessions, other) == StudyState.ROUTED, timeout=5.0,
                 msg="the other study routed within seconds of its idle time")
        assert all(state(sessions, uid) == StudyState.ROUTED for uid in study_uids(sessions))
    finally:
        stop.set()
        thread.join(timeout=30)


def land(sessions: sessionmaker[Session], folder: Path, description: str) -> str:
    """A four-slice MR series, spooled and recorded as received (as the receiver lands it)."""
    series = make_series(n_slices=4, rows=8, columns=8, series_description=description)
    paths = write_series(series, folder)
    with session_scope(sessions) as session:
        for ds, path in zip(series, paths, strict=True):
            meta = InstanceMeta(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                                sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, modality="MR", series_number=7,
                                series_description=description, patient_id="P1", patient_name="SYNTHETIC^PHANTOM")
            record_instance(session, meta, path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                            size=path.stat().st_size, calling_ae="PACS")
    return str(series[0].StudyInstanceUID)


def state(sessions: sessionmaker[Session], study_uid: str) -> StudyState | None:
    with sessions() as session:
        return session.scalar(select(Study.state).where(Study.study_uid == study_uid))


def study_uids(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(Study.study_uid)))


# -- the console ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, base: str) -> Iterator[Any]:
    context = browser.new_context(base_url=base)
    page = context.new_page()
    page.goto("/ui/login")
    page.get_by_label("User").fill("boss")
    page.get_by_label("Password").fill("admin-pass-1")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/ui/")
    yield page
    context.close()


def post_form(page: Any, base: str, path: str, form: dict[str, str]) -> Any:
    """A form post with the page's session and token, carrying values no form field would (a browser
    strips line breaks from a text input), as a forged request would."""
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    return page.request.post(base + path, form={**form, "csrf_token": token}, headers={"Origin": base})


def test_the_rule_tester_takes_up_to_its_limit_of_files_and_refuses_more(page: Any, base: str) -> None:
    """The console's rule tester reads up to MAX_UPLOAD_FILES (2000) files in one upload (a study's worth,
    more than the form parser's default of 1000); one more is a 400, with nothing read."""
    page.goto("/ui/rules")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}

    def upload(n: int) -> requests.Response:
        files = [("files", (f"{i}.dcm", b"not DICOM")) for i in range(n)]
        return requests.post(base + "/ui/rules/test", data={"csrf_token": token}, files=files, cookies=cookies,
                             headers={"Origin": base}, timeout=120)

    taken = upload(1500)
    assert taken.status_code == 200 and "1500 uploaded file(s) are not DICOM" in taken.text
    assert upload(MAX_UPLOAD_FILES + 1).status_code == 400


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_console_refuses_a_bad_peer_host(page: Any, base: str, sessions: sessionmaker[Session], host: str) -> None:
    page.goto("/ui/peers")
    answer = post_form(page, base, "/ui/peers", {"ae_title": "PEERX", "host": host, "port": "104"})
    assert answer.status == 422 and "must be an IP address, a network" in answer.text()
    assert stored(sessions) == NOTHING


def test_console_refuses_a_rule_named_like_a_path_and_no_remove_button_leaves_its_page(
        page: Any, base: str, sessions: sessionmaker[Session]) -> None:
    page.goto("/ui/peers")
    page.locator("#peer-ae").fill("PEERZ")
    page.locator("#peer-host").fill("10.1.2.3")
    page.get_by_role("button", name="Save peer").click()
    assert "peer PEERZ saved" in page.get_by_role("status").first.inner_text()
    page.goto("/ui/rules")
    page.locator("#rule-name").fill(PATH_NAME)
    page.locator("#rule-model").fill("deepbet")
    with page.expect_response(lambda r: r.url.endswith("/ui/rules") and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Save rule").click()
    assert answer.value.status == 422
    assert "must be 1 to 64 letters" in page.get_by_role("alert").first.inner_text()
    assert stored(sessions)["rules"] == [] and stored(sessions)["peers"] == ["PEERZ"]
    actions = page.eval_on_selector_all("form[method=post]", "forms => forms.map(f => f.action)")
    assert all(a.startswith(base + "/ui/rules") for a in actions if "delete" in a)


def test_console_refuses_a_rule_for_a_model_not_installed_unless_ticked(page: Any, sessions: sessionmaker[Session]
                                                                       ) -> None:
    page.goto("/ui/rules")
    page.locator("#rule-name").fill("future")
    page.locator("#rule-model").fill("nosuchmodel")
    with page.expect_response(lambda r: r.url.endswith("/ui/rules") and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Save rule").click()
    assert answer.value.status == 422
    error = page.get_by_role("alert").first.inner_text()
    assert "model nosuchmodel, which is not installed (installed: " in error and "deepbet" in error
    assert stored(sessions) == NOTHING
    page.locator("#rule-name").fill("future")
    page.locator("#rule-model").fill("nosuchmodel")
    page.get_by_label("Model not installed yet").check()
    page.get_by_role("button", name="Save rule").click()
    assert "rule future saved" in page.get_by_role("status").first.inner_text()
    # saved, and the page says it gives no job yet, in routing's own words (a study's reason says the same)
    state = page.locator("tr", has_text="nosuchmodel").locator(".rule-state").inner_text()
    assert state == "gives no job: names unknown model 'nosuchmodel'"
    page.locator("#rule-name").fill("chest")
    page.locator("#rule-model").fill("cxr-demo")  # installed, and off while demo_models is
    page.get_by_role("button", name="Save rule").click()
    state = page.locator("tr", has_text="cxr-demo").locator(".rule-state").inner_text()
    assert state.startswith("suspended: model cxr-demo is a demonstration model, routed only with demo_models")
    assert stored(sessions)["rules"] == ["chest", "future"]


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_console_answers_an_out_of_range_job_id_with_no_such_job(page: Any, base: str, action: str) -> None:
    """Out of range, or in range and not the node's (the largest id, and a small one): 404 "no such job",
    as the API answers each of them."""
    page.goto("/ui/jobs")
    for job_id in (HUGE_JOB, JOB_ID_MAX, 999):
        answer = post_form(page, base, f"/ui/jobs/{job_id}/{action}", {})
        assert answer.status == 404 and "no such job" in answer.text(), job_id



def test_console_retries_and_cancels_a_job_of_its_own_and_says_which_study_waits_longest(
        page: Any, base: str, sessions: sessionmaker[Session]) -> None:
    page.goto("/ui/")
    assert page.locator("#oldest").inner_text() == "Nothing is waiting."
    dead_id, queued_id = _study_with_jobs(sessions)  # the dead-lettered job is the older one
    page.goto("/ui/")
    assert page.locator("#oldest").inner_text() == (
        f"1.2.3: job {queued_id} (deepbet) is queued: waiting for a worker")
    page.goto("/ui/jobs")
    answer = post_form(page, base, f"/ui/jobs/{dead_id}/retry", {})
    assert answer.status == 200 and f"job {dead_id} queued again" in answer.text()
    answer = post_form(page, base, f"/ui/jobs/{queued_id}/cancel", {})
    assert answer.status == 200 and f"job {queued_id} cancelled" in answer.text()
    page.goto("/ui/")
    assert page.locator("#oldest").inner_text().startswith(f"1.2.3: job {dead_id} (deepbet) is queued")


def test_with_no_job_waiting_the_console_names_the_oldest_study_still_receiving(
        page: Any, sessions: sessionmaker[Session]) -> None:
    """No job queued or running: the oldest study whose instances are still arriving is the one that
    waits, with its reason; a study already routed, or one with nothing to do, waits for nothing."""
    with session_scope(sessions) as session:
        session.add_all([Study(study_uid="1.2.1", calling_ae="PACS", state=StudyState.ROUTED),
                         Study(study_uid="1.2.2", calling_ae="PACS", state=StudyState.NO_MATCH),
                         Study(study_uid="1.2.4", calling_ae="PACS", state=StudyState.RECEIVING,
                               state_reason="waiting for the PACS's count", first_received_at=dt.datetime(2026, 1, 2)),
                         Study(study_uid="1.2.3", calling_ae="PACS", state=StudyState.RECEIVING,
                               first_received_at=dt.datetime(2026, 1, 1))])  # the older, added later
    page.goto("/ui/")
    assert page.locator("#oldest").inner_text() == "1.2.3: instances still arriving"
    with session_scope(sessions) as session:
        session.execute(delete(Study).where(Study.study_uid == "1.2.3"))
    page.goto("/ui/")
    assert page.locator("#oldest").inner_text() == "1.2.4: waiting for the PACS's count"


def test_the_free_disk_space_is_said_in_mib(base: str, node_settings: Settings) -> None:
    status, body = call(base, "GET", "/api/studies", token=login(base, "boss", "admin-pass-1"))
    assert status == 200
    folder = node_settings.spool_dir
    while not folder.exists():  # the spool is made by the first instance; its file system is there already
        folder = folder.parent
    free_mib = shutil.disk_usage(folder).free / 2**20
    assert abs(body["disk"]["free_mb"] - free_mib) < 256  # what other work on the disk may change meanwhile
    assert body["disk"]["min_free_mb"] == node_settings.min_free_disk_mb


# -- the CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["a\nb", "../../etc/passwd"])  # a NUL cannot be passed in argv
def test_cli_refuses_a_bad_peer_host(settings: Settings, sessions: sessionmaker[Session], host: str) -> None:
    one_sentence(cli(settings, "peers", "add", "PEERX", host, "104"), 2, "must be an IP address, a network")
    assert stored(sessions) == NOTHING


def test_cli_refuses_a_destination_it_cannot_dial(settings: Settings, sessions: sessionmaker[Session]) -> None:
    one_sentence(cli(settings, "destinations", "add", "archive", "ARCHIVE", "10.0.0.0/8", "104"), 2,
                 "must be an IP address or a host name")
    one_sentence(cli(settings, "destinations", "add", "../archive", "ARCHIVE", "10.0.0.9", "104"), 2,
                 "must be 1 to 64 letters")
    assert stored(sessions) == NOTHING


def test_cli_refuses_a_rule_named_like_a_path_or_for_a_model_not_installed(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    one_sentence(cli(settings, "rules", "add", PATH_NAME, "deepbet"), 2, "must be 1 to 64 letters")
    one_sentence(cli(settings, "rules", "add", "twice", "deepbet", "--match", r"SeriesDescription=(T1)\1"), 2,
                 "uses a back-reference, which cannot be matched in linear time")
    one_sentence(cli(settings, "rules", "add", "future", "nosuchmodel", "--match", "Modality=^MR$"), 2,
                 "rule future names model nosuchmodel, which is not installed (installed: ")
    assert stored(sessions) == NOTHING
    done = cli(settings, "rules", "add", "future", "nosuchmodel", "--match", "Modality=^MR$", "--allow-missing-model")
    assert done.returncode == 0, done.stderr
    assert stored(sessions)["rules"] == ["future"]
    assert cli(settings, "rules", "remove", "future").returncode == 0
    assert stored(sessions)["rules"] == []


def test_cli_answers_an_out_of_range_job_id_with_no_such_job(settings: Settings, sessions: sessionmaker[Session]
                                                            ) -> None:
    one_sentence(cli(settings, "job", "show", HUGE_JOB), 1, f"no job {HUGE_JOB}")
    one_sentence(cli(settings, "retry", HUGE_JOB), 1, f"no job {HUGE_JOB}")

