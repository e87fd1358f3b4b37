"""The admin API's and console's details a client sees: error bodies and their headers, the console's cookie
attributes, filter choices, the rule tester's verdicts, the dashboard's sparkline, the origin check's ports
and the study timeline's reasons. Real admin server over a loopback socket, raw requests."""

from __future__ import annotations

import datetime as dt
import html
import http.client
import json
import re
import socket
import urllib.parse

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin import csrf
from dicomnode.admin.console import _sparkline
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.inference.registry import load_manifests
from dicomnode.jobs.models import Study
from dicomnode.jobs.status import JobStatus
from dicomnode.settings import Rule, Settings
from tests.integration.conftest import Serve
from tests.support.admin import Answer, call, console_login, exchange, login
from tests.support.models import write_threshold_model
from tests.support.net import wait_for
from tests.support.peers import REPO
from tests.support.spooled import spool
from tests.support.synthetic import make_series
from tests.support.trail import audit_rows

PUBLIC = "https://dicomnode.example.org"


def _session(base: str) -> dict[str, str]:
    return {"Cookie": f"dicomnode_session={console_login(base, 'it', 's3cret-pass')}"}


def _console_login_from(base: str, origin: str) -> int:
    """The status of a console login form sent with its own token and cookie, from ``origin``."""
    page = exchange(base, "GET", "/ui/login")
    nonce = page.cookies()[csrf.LOGIN_COOKIE].split(";")[0].split("=", 1)[1]
    form = urllib.parse.urlencode({"user": "it", "password": "s3cret-pass", "csrf_token": nonce}).encode()
    return exchange(base, "POST", "/ui/login", {"Origin": origin, "Cookie": f"{csrf.LOGIN_COOKIE}={nonce}",
                                                "Content-Type": "application/x-www-form-urlencoded"}, form).status


@pytest.mark.parametrize("action", ["retry", "cancel"])
@pytest.mark.parametrize("job_id", [999, 0, 2**63])
def test_changing_a_job_that_does_not_exist_is_404_no_such_job(serve: Serve, action: str, job_id: int) -> None:
    """Retrying or cancelling a job id the node does not have answers 404 with the detail "no such job"."""
    base = serve()
    status, body = call(base, "POST", f"/api/jobs/{job_id}/{action}", token=login(base, "it", "s3cret-pass"))
    assert (status, body) == (404, {"detail": "no such job"})


def test_jobs_page_offers_every_job_state_as_a_filter(serve: Serve) -> None:
    """The console's jobs page offers one filter choice for each job state, the one asked for selected."""
    base = serve()
    page = exchange(base, "GET", "/ui/jobs?state=dead_letter", _session(base))
    assert page.status == 200
    choices = [line.strip() for line in page.text.split("<option")[1:]]
    assert [c.split('"')[1] for c in choices] == ["", *[s.value for s in JobStatus]]
    assert [c.split('"')[1] for c in choices if " selected>" in c] == ["dead_letter"]


def test_login_page_sets_a_strict_http_only_token_cookie_for_the_login_path(serve: Serve) -> None:
    """The console's login page sets its form's token cookie HttpOnly, SameSite=Strict, for /ui/login only."""
    page = exchange(serve(), "GET", "/ui/login")
    assert page.status == 200
    name_value, *attributes = [p.strip() for p in page.cookies()[csrf.LOGIN_COOKIE].split(";")]
    nonce = name_value.split("=", 1)[1]
    assert f'name="csrf_token" value="{nonce}"' in page.text
    assert {a.lower() for a in attributes} == {"httponly", "samesite=strict", "path=/ui/login"}


def test_rules_page_shows_each_rules_verdict_for_a_study_on_the_node(serve: Serve, settings: Settings,
                                                                     sessions: sessionmaker[Session]) -> None:
    """The rules page asked about a study on the node shows, per series, which models would run and why."""
    write_threshold_model(settings.data_dir / "models", 0.5)
    rules = [Rule(name="mr-seg", model="threshold-test", match={"Modality": "^MR$"}),
             Rule(name="mr-absent", model="absent", match={"Modality": "^MR$"}),
             Rule(name="ct-only", model="threshold-test", match={"Modality": "^CT$"})]
    base = serve(rules=rules, models_dir=settings.data_dir / "models")
    series = make_series(n_slices=2, rows=8, columns=8, series_description="T1 3D sag")
    spool(settings, sessions, series)
    page = exchange(base, "GET", f"/ui/rules?study_uid={series[0].StudyInstanceUID}", _session(base))
    assert page.status == 200, page.text[:300]
    verdicts = html.unescape(page.text.split('id="verdicts">', 1)[1].split("</table>", 1)[0])
    (row,) = verdicts.split("<tr><td>")[1:]
    cells = [c.split(">", 1)[-1] for c in row.split("</td>")[:5]]
    assert cells[:4] == [series[0].SeriesInstanceUID, "MR", "T1 3D sag", "threshold-test"]
    reasons = cells[4].split("<br>")
    assert reasons[:2] == ["rule mr-seg matched: runs threshold-test",
                           "rule mr-absent matched, but gives no job: names unknown model 'absent'"]
    assert len(reasons) == 4 and "ct-only" in reasons[2] and reasons[3] == ""


def test_sparkline_counts_events_per_hour_over_the_last_day() -> None:
    """The dashboard's sparkline puts each event in its hour (newest right), scaled to the busiest hour; a
    time without a zone is UTC (SQLite's), one with a zone is that instant (PostgreSQL's, in the server's
    time zone, here +05:30)."""
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    times = [now, now - dt.timedelta(minutes=59), (now - dt.timedelta(hours=2, minutes=1)).replace(tzinfo=None),
             now - dt.timedelta(hours=25), now + dt.timedelta(hours=1),
             (now - dt.timedelta(hours=5, minutes=30)).astimezone(india)]  # 12:00 on a clock in India
    polyline, count = _sparkline(times, now)
    heights = ["28.0"] * 24
    heights[23], heights[21], heights[18] = "2.0", "15.0", "15.0"
    points = " ".join(f"{10 * i},{h}" for i, h in enumerate(heights))
    assert (polyline, count) == (f'<polyline fill="none" stroke="#1d3557" stroke-width="2" points="{points}"/>', 4)


def test_origin_of_keeps_only_a_port_that_is_not_the_schemes_default() -> None:
    """An origin names its port only when it is not the scheme's default one."""
    assert csrf.origin_of("http://Host:8443/x") == "http://host:8443"
    assert csrf.origin_of("https://host:443/x") == "https://host"
    assert csrf.origin_of("http://host:80/x") == "http://host"
    assert csrf.origin_of("https://host:80/x") == "https://host:80"


def test_origin_of_what_is_no_web_origin_is_empty() -> None:
    """A port out of range, another scheme, no host: no origin, so never the console's; an IPv6 host keeps
    its brackets."""
    for url in ("http://host:99999/x", "ftp://host/x", "javascript:alert(1)", "http:///x", "null", ""):
        assert csrf.origin_of(url) == "", url
    assert csrf.origin_of("http://[::1]:8080/x") == "http://[::1]:8080"


def test_a_console_form_without_origin_is_judged_by_its_referer(serve: Serve,
                                                                 sessions: sessionmaker[Session]) -> None:
    """A browser that sends no Origin sends the Referer: the console's own page is accepted, another site's
    refused with its origin named in the audit trail (never its path or query), and a form with neither is
    refused."""
    base = serve()

    def login_with(headers: dict[str, str], source: str) -> int:
        page = exchange(base, "GET", "/ui/login", source=source)
        nonce = page.cookies()[csrf.LOGIN_COOKIE].split(";")[0].split("=", 1)[1]
        form = urllib.parse.urlencode({"user": "it", "password": "s3cret-pass", "csrf_token": nonce}).encode()
        return exchange(base, "POST", "/ui/login", {**headers, "Cookie": f"{csrf.LOGIN_COOKIE}={nonce}",
                                                    "Content-Type": "application/x-www-form-urlencoded"}, form,
                        source=source).status

    assert login_with({"Referer": f"{base}/ui/login"}, "127.0.0.1") == 303
    assert login_with({"Referer": "https://evil.example/phish?user=it"}, "127.0.0.2") == 403
    assert login_with({}, "127.0.0.3") == 403  # each from its own address: each the first of its burst
    reasons = {(d := json.loads(r.detail))["address"]: d["reason"] for r in audit_rows(sessions, "request_refused")}
    expected = csrf.origin_of(base)
    assert reasons == {
        "127.0.0.2": f"POST /ui/login refused: Referer from 'https://evil.example' is not the console's ({expected})",
        "127.0.0.3": "POST /ui/login refused: neither Origin nor Referer: the console's forms always send one"}


def test_console_post_from_another_port_of_the_same_host_is_refused(serve: Serve) -> None:
    """A console form sent from the console's own origin, its port included, is accepted; from another port
    of the same host it is refused."""
    base = serve()
    port = int(base.rsplit(":", 1)[1])
    assert _console_login_from(base, f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}") == 403
    assert _console_login_from(base, f"http://127.0.0.1:{port}") == 303


def test_a_refused_console_request_is_a_page_that_says_so(serve: Serve) -> None:
    """403 with a page titled as what happened, the reason as an alert, and no notice of anything done."""
    base = serve()
    page = exchange(base, "GET", "/ui/login")
    nonce = page.cookies()[csrf.LOGIN_COOKIE].split(";")[0].split("=", 1)[1]
    form = urllib.parse.urlencode({"user": "it", "password": "s3cret-pass", "csrf_token": nonce}).encode()
    answer = exchange(base, "POST", "/ui/login", {"Origin": "http://elsewhere.example", "Content-Type":
                                                  "application/x-www-form-urlencoded",
                                                  "Cookie": f"{csrf.LOGIN_COOKIE}={nonce}"}, form)
    assert answer.status == 403
    assert "<title>Request refused · dicomnode</title>" in answer.text and "<h1>Request refused</h1>" in answer.text
    assert 'role="alert"' in answer.text and "nothing was changed" in answer.text
    assert "Open the console again and repeat it there." in html.unescape(answer.text)  # what to do instead
    assert 'role="status"' not in answer.text


def test_a_console_form_without_its_session_s_token_is_refused_and_changes_nothing(serve: Serve) -> None:
    """Logged in, from the console's own origin: a form whose token is missing, or not the session's (one
    character off, or another session's length of it), is refused 403; with the session's token it is saved."""
    base = serve()
    headers = {**_session(base), "Origin": base, "Content-Type": "application/x-www-form-urlencoded"}
    page = exchange(base, "GET", "/ui/peers", headers)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    token = found.group(1)

    def post(sent: str) -> Answer:
        form = {"ae_title": "MODALITY9", "host": "10.1.2.3", "port": "104", "csrf_token": sent}
        return exchange(base, "POST", "/ui/peers", headers, urllib.parse.urlencode(form).encode())

    for sent in ("", token[:-1] + ("A" if token[-1] != "A" else "B"), "x" * len(token)):
        answer = post(sent)
        assert answer.status == 403 and "nothing was changed" in answer.text, sent
    assert "MODALITY9" not in exchange(base, "GET", "/ui/peers", headers).text
    assert post(token).status in (200, 303)
    assert "MODALITY9" in exchange(base, "GET", "/ui/peers", headers).text


def test_the_dashboard_lists_each_model_with_its_version(serve: Serve) -> None:
    base = serve()
    page = exchange(base, "GET", "/ui/", _session(base))
    manifests = load_manifests(REPO / "models")
    assert manifests
    for manifest in manifests.values():
        assert f"<td>{manifest.id}</td><td>{manifest.version}</td><td>{manifest.task}</td>" in page.text, manifest.id


def test_an_api_request_that_does_not_validate_names_where_and_what(serve: Serve) -> None:
    """422 with FastAPI's shape: each complaint's location and message (and never the value sent)."""
    base = serve()
    token = login(base, "it", "s3cret-pass")
    status, body = call(base, "PUT", "/api/peers/MODALITY9", {"port": "not a port", "host": "10.1.2.3"}, token=token)
    assert status == 422
    assert body["detail"] and all(set(item) == {"loc", "msg"} for item in body["detail"])
    assert body["detail"][0]["loc"] == ["body", "port"] and "not a port" not in json.dumps(body)


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic aXQ6czNjcmV0LXBhc3M="])
def test_an_api_request_without_a_live_token_is_401_with_the_scheme_to_use(serve: Serve,
                                                                          authorization: str | None) -> None:
    """RFC 6750 3: a 401 names the scheme it wants, ``WWW-Authenticate: Bearer``."""
    base = serve()
    answer = exchange(base, "GET", "/api/studies", {"Authorization": authorization} if authorization else {})
    assert answer.status == 401 and answer.header("WWW-Authenticate") == "Bearer"


def test_a_console_page_shown_without_an_action_carries_no_notice(serve: Serve) -> None:
    """A notice ("rule ... saved") answers an action; a page merely opened shows none."""
    base = serve()
    for path in ("/ui/", "/ui/rules", "/ui/peers", "/ui/jobs", "/ui/studies", "/ui/audit"):
        answer = exchange(base, "GET", path, _session(base))
        assert answer.status == 200, path
        assert 'role="status"' not in answer.text and 'role="alert"' not in answer.text, path


def test_console_post_naming_the_default_port_of_the_public_origin_is_accepted(serve: Serve) -> None:
    """An Origin that spells out the public origin's default port (https, 443) is the console's own."""
    base = serve(admin_public_origin=PUBLIC)
    assert _console_login_from(base, "https://dicomnode.example.org:8443") == 403
    assert _console_login_from(base, "https://dicomnode.example.org:443") == 303


def test_oversized_body_gets_a_json_413(serve: Serve) -> None:
    """A body over the limit is answered 413 with a JSON body naming why, as application/json."""
    base = serve(admin_max_body_bytes=4096)
    answer = exchange(base, "POST", "/api/login", {"Content-Type": "application/json"}, b" " * 4097)
    assert answer.status == 413
    assert answer.header("Content-Type") == "application/json"
    assert json.loads(answer.text) == {"detail": "request body too large"}


def test_full_capacity_gets_a_json_503_with_retry_after(serve: Serve) -> None:
    """While the capacity is taken, a request is answered 503 with a JSON reason and Retry-After: 1."""
    base = serve(admin_request_timeout_seconds=60.0, admin_max_connections=1)  # the slow request outlasts the polls
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"user\":")  # handled, waiting for the rest of its body

        def refused() -> Answer | None:
            answer = exchange(base, "GET", "/api/studies")
            return answer if answer.status == 503 else None

        answer = wait_for(refused, timeout=10, msg="the capacity taken by the slow request")
    assert answer is not None
    assert answer.header("Content-Type") == "application/json" and answer.header("Retry-After") == "1"
    assert json.loads(answer.text) == {"detail": "too many requests being handled; try again shortly"}


def test_study_timeline_gives_each_events_recorded_reason(serve: Serve, sessions: sessionmaker[Session]) -> None:
    """A study's timeline gives each of its audit events with the reason recorded in its detail ("" if none)."""
    base = serve()
    with session_scope(sessions) as session:
        session.add(Study(study_uid="1.2.9", calling_ae="PACS"))
        record(session, AuditEvent.STUDY_RECEIVED, study_uid="1.2.9", instances=2)
        record(session, AuditEvent.INSTANCE_REFUSED, Outcome.MINOR_FAILURE, study_uid="1.2.9",
               reason="not a storage SOP class")
        record(session, AuditEvent.JOB_FAILED, Outcome.SERIOUS_FAILURE, study_uid="1.2.9",
               reason="association rejected")
        record(session, AuditEvent.JOB_FAILED, Outcome.SERIOUS_FAILURE, study_uid="1.2.8", reason="elsewhere")
    status, study = call(base, "GET", "/api/studies/1.2.9", token=login(base, "it", "s3cret-pass"))
    assert status == 200
    assert [(e["event"], e["outcome"], e["reason"]) for e in study["timeline"]] == [
        ("study_received", "success", ""), ("instance_refused", "minor_failure", "not a storage SOP class"),
        ("job_failed", "serious_failure", "association rejected"),
        ("instances_accessed", "success", "study viewed in the admin API")]  # this very view, audited first


def test_the_study_list_filtered_by_calling_ae_holds_that_peers_studies_only(
    serve: Serve, sessions: sessionmaker[Session]
) -> None:
    """``/api/studies?ae=``: the studies that AE sent, and no other's."""
    base = serve()
    with session_scope(sessions) as session:
        session.add_all([Study(study_uid=f"1.2.9.{n}", calling_ae=ae)
                         for n, ae in enumerate(["CT_SCANNER", "MR_SCANNER", "CT_SCANNER"], start=1)])
    token = login(base, "it", "s3cret-pass")
    status, answer = call(base, "GET", "/api/studies?ae=CT_SCANNER", token=token)
    assert status == 200, answer
    assert sorted(row["study_uid"] for row in answer["studies"]) == ["1.2.9.1", "1.2.9.3"]
    status, answer = call(base, "GET", "/api/studies?ae=NOBODY", token=token)
    assert (status, answer["studies"]) == (200, [])


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_a_console_on_an_ipv6_address_knows_its_own_origin(serve: Serve) -> None:
    """admin_host = "::1": the console's origin is http://[::1]:PORT (RFC 3986 brackets), so that its own
    forms are accepted from it."""
    port = int(serve(admin_host="::1").rsplit(":", 1)[1])

    def exchange6(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("::1", port, timeout=30)
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        conn.close()
        return answer

    page = exchange6("GET", "/ui/login", {})
    nonce = next(c for c in page.headers.get_all("Set-Cookie") or [] if c.startswith(csrf.LOGIN_COOKIE))
    nonce = nonce.split(";")[0].split("=", 1)[1]
    form = urllib.parse.urlencode({"user": "it", "password": "s3cret-pass", "csrf_token": nonce}).encode()
    answer = exchange6("POST", "/ui/login", {"Origin": f"http://[::1]:{port}", "Cookie": f"{csrf.LOGIN_COOKIE}={nonce}",
                                             "Content-Type": "application/x-www-form-urlencoded"}, form)
    assert answer.status == 303
