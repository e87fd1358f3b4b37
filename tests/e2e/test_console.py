"""The web console in real headless Chromium (Debian's, driven by playwright), against a running node and
a running Orthanc. Screenshots of every page go to .artifacts/console/ (ignored by git)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomnode.admin.auth import hash_password
from tests.e2e.test_reliability import start_node
from tests.support.admin import chromium
from tests.support.net import free_port, port_open, wait_for
from tests.support.peers import REPO, NodeProcess, Orthanc, storescp, storescu
from tests.support.synthetic import make_series, write_series

SHOTS = REPO / ".artifacts" / "console"
PATIENT_NAME, PATIENT_ID = "CONSOLE^PATIENT", "CONSOLE-4711"
USERS = json.dumps([
    {"name": "boss", "password_hash": hash_password("admin-pass-1", 1000), "role": "admin"},
    {"name": "eve", "password_hash": hash_password("viewer-pass-1", 1000), "role": "viewer"},
])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def node(pacs: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    process = start_node(tmp_path_factory.mktemp("node"), pacs, DICOMNODE_ADMIN_PORT=str(free_port()),
                         DICOMNODE_ADMIN_USERS=USERS)
    pacs.add_modality("NODE", process.ae_title, process.port)
    wait_for(lambda: port_open(int(process.env["DICOMNODE_ADMIN_PORT"])), timeout=60, msg="admin port listening")
    yield process
    process.stop()


def _base(node: NodeProcess) -> str:
    return f"http://127.0.0.1:{node.env['DICOMNODE_ADMIN_PORT']}"


def _page(browser: Any, node: NodeProcess, user: str, password: str) -> Any:
    page = browser.new_context().new_page()
    page.goto(_base(node) + "/ui/")
    assert page.url.endswith("/ui/login")  # not logged in: sent to the login page
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/ui/")
    return page


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _study_in_orthanc(pacs: Orthanc, folder: Path) -> str:
    series = make_series(n_slices=8, rows=16, columns=16, series_description="CRASHTEST T1",
                         patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    write_series(series, folder)
    result = storescu(pacs.dicom_port, folder, called=pacs.aet)
    assert result.returncode == 0, result.stderr
    return str(series[0].StudyInstanceUID)


def _route(pacs: Orthanc, study_uid: str) -> None:
    study_id = pacs.study_id(study_uid)
    answer = pacs.request("POST", "/modalities/NODE/store", {"Resources": [study_id], "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0, answer


def _reload_until(page: Any, predicate: Any, msg: str, timeout: float = 90) -> None:
    def check() -> bool:
        page.reload()
        return bool(predicate())
    wait_for(check, timeout=timeout, interval=1.0, msg=msg)


def _metrics(node: NodeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(_base(node) + "/metrics", timeout=10) as rsp:
        text = rsp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_log_in_add_a_peer_and_echo_orthanc(browser: Any, node: NodeProcess) -> None:
    page = _page(browser, node, "boss", "admin-pass-1")
    assert page.locator("#readiness").inner_text() == "ready"
    _shot(page, "dashboard")
    page.get_by_role("link", name="Peers & destinations").click()
    page.get_by_label("AE title", exact=True).first.fill("MODALITY1")
    page.locator("#peer-host").fill("10.1.2.3")
    page.locator("#peer-port").fill("104")
    page.get_by_role("button", name="Save peer").click()
    assert "peer MODALITY1 saved" in page.get_by_role("status").first.inner_text()
    assert page.get_by_role("button", name="remove MODALITY1").is_visible()
    page.get_by_role("button", name="echo ORTHANC").click()
    echo = page.locator("#echo-result").inner_text()
    assert "0x0000 (success)" in echo and " ms" in echo
    _shot(page, "peers")


def test_study_from_orthanc_dead_letters_then_a_retry_brings_it_to_done(browser: Any, node: NodeProcess,
                                                                        pacs: Orthanc, tmp_path: Path) -> None:
    before = _metrics(node)
    page = _page(browser, node, "boss", "admin-pass-1")
    with storescp(tmp_path / "research", aet="RESEARCH", extra_args=("--refuse",)) as refusing:
        page.goto(_base(node) + "/ui/peers")
        page.locator("#dest-name").fill("research")
        page.locator("#dest-ae").fill("RESEARCH")
        page.locator("#dest-port").fill(str(refusing))
        page.get_by_role("button", name="Save destination").click()
        assert "destination research saved" in page.get_by_role("status").first.inner_text()
        study_uid = _study_in_orthanc(pacs, tmp_path / "study")
        _route(pacs, study_uid)
        page.goto(_base(node) + "/ui/jobs?state=dead_letter")
        _reload_until(page, lambda: page.get_by_role("button", name="Retry").count() == 1,
                      msg="the job dead-lettered (the research archive refuses associations)")
    _shot(page, "jobs")
    page.goto(_base(node) + "/ui/peers")
    page.get_by_role("button", name="remove destination research").click()
    page.goto(_base(node) + "/ui/jobs?state=dead_letter")
    page.get_by_role("button", name="Retry").click()
    assert "queued again" in page.get_by_role("status").first.inner_text()
    page.goto(_base(node) + f"/ui/studies/{study_uid}")
    _reload_until(page, lambda: page.locator(".job-status").all_inner_texts() == ["succeeded"],
                  msg="the retried job succeeded")
    timeline = page.locator("#timeline").inner_text()
    for event in ("study_received", "job_queued", "job_failed", "job_requeued", "result_sent", "job_succeeded"):
        assert event in timeline, event
    assert page.locator("#study-state").inner_text() == "routed"
    assert PATIENT_NAME in page.content()  # the admin role sees the patient
    _shot(page, "study")
    after = _metrics(node)  # every sample parsed; the counters moved as the run says
    succeeded, dead = ("dicomnode_jobs", (("status", "succeeded"),)), ("dicomnode_jobs", (("status", "dead_letter"),))
    assert after[succeeded] == before[succeeded] + 1 and after[dead] == before[dead]
    assert after[("dicomnode_instances", ())] == before[("dicomnode_instances", ())] + 8
    assert after[("dicomnode_audit_rows_total", ())] > before[("dicomnode_audit_rows_total", ())]
    logins = ("dicomnode_admin_logins_total", (("outcome", "success"),))
    assert after[logins] == before[logins] + 1
    page.goto(_base(node) + "/ui/audit")
    assert page.locator("#verify").inner_text().startswith("Audit trail intact")
    _shot(page, "audit")


def test_rule_tester_on_an_uploaded_series(browser: Any, node: NodeProcess, tmp_path: Path) -> None:
    page = _page(browser, node, "eve", "viewer-pass-1")
    page.goto(_base(node) + "/ui/rules")
    assert page.locator("tr", has_text="threshold-test").locator(".rule-state").first.inner_text() == "in force"
    matching = write_series(make_series(n_slices=3, rows=8, columns=8, series_description="CRASHTEST T1"),
                            tmp_path / "match")
    other = write_series(make_series(n_slices=2, rows=8, columns=8, series_description="LOCALIZER"), tmp_path / "other")
    page.get_by_label("Or upload a series").set_input_files([str(p) for p in [*matching, *other]])
    page.get_by_role("button", name="Test files").click()
    assert page.locator("#verdicts .would-run").all_inner_texts() == ["threshold-test", "nothing"]
    verdicts = page.locator("#verdicts").inner_text()
    assert "matched: runs threshold-test" in verdicts
    assert "SeriesDescription does not match /^CRASHTEST/" in verdicts
    _shot(page, "rules")


def test_viewer_finds_no_patient_name_anywhere(browser: Any, node: NodeProcess, pacs: Orthanc,
                                               tmp_path: Path) -> None:
    study_uid = _study_in_orthanc(pacs, tmp_path / "study")
    _route(pacs, study_uid)
    page = _page(browser, node, "eve", "viewer-pass-1")
    page.goto(_base(node) + "/ui/studies")
    _reload_until(page, lambda: study_uid in page.content(), msg="the study listed")
    for path in ("/ui/", "/ui/studies", f"/ui/studies/{study_uid}", "/ui/jobs", "/ui/peers", "/ui/rules",
                 f"/ui/rules?study_uid={study_uid}", "/ui/audit"):
        page.goto(_base(node) + path)
        html = page.content()
        assert PATIENT_NAME not in html and PATIENT_ID not in html and "PATIENT" not in html, path
        assert page.get_by_role("button", name="Retry").count() == 0
    page.goto(_base(node) + f"/ui/studies/{study_uid}")
    assert "***" in page.content()
    _shot(page, "viewer-study")
