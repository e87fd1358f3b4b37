"""The web console's pages as IT staff meet them, over a real loopback socket: the login form's refusals in
words, logging out ending the session, the studies list's filters and their refusals, a study's page, the
jobs page's filter and the retry and cancel buttons' answers for a job that is not there or not in the state
they need. (The e2e tests drive the same pages in Chromium; these run in the test's process.)"""

from __future__ import annotations

import datetime as dt
import html
import re
import urllib.parse

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin import csrf
from dicomnode.jobs.status import JobStatus
from dicomnode.settings import Settings
from tests.integration.conftest import Serve
from tests.support.admin import Answer, console_login, exchange
from tests.support.spooled import queue_job, spool
from tests.support.synthetic import make_series


class Console:
    """One logged-in console session from the console's own origin."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.headers = {"Cookie": f"dicomnode_session={console_login(base, 'it', 's3cret-pass')}", "Origin": base}

    def get(self, path: str) -> Answer:
        return exchange(self.base, "GET", path, self.headers)

    def post(self, path: str, form: dict[str, str] | None = None, page: str = "/ui/jobs") -> Answer:
        """A form of ``page`` sent to ``path`` with the session's token, as the browser sends it."""
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.get(page).text)
        assert found is not None, page
        body = urllib.parse.urlencode({**(form or {}), "csrf_token": found.group(1)}).encode()
        return exchange(self.base, "POST", path, {**self.headers, "Content-Type": "application/x-www-form-urlencoded"},
                        body)


def _alert(page: Answer) -> str:
    found = re.search(r'role="alert"[^>]*>(.*?)<', page.text, re.S)
    return html.unescape(found.group(1)).strip() if found else ""


def _notice(page: Answer) -> str:
    found = re.search(r'role="status"[^>]*>(.*?)<', page.text, re.S)
    return html.unescape(found.group(1)).strip() if found else ""


def _login_form(base: str, user: str, password: str) -> Answer:
    page = exchange(base, "GET", "/ui/login")
    nonce = page.cookies()[csrf.LOGIN_COOKIE].split(";")[0].split("=", 1)[1]
    form = urllib.parse.urlencode({"user": user, "password": password, "csrf_token": nonce}).encode()
    return exchange(base, "POST", "/ui/login", {"Origin": base, "Cookie": f"{csrf.LOGIN_COOKIE}={nonce}",
                                                "Content-Type": "application/x-www-form-urlencoded"}, form)


def test_the_login_form_says_why_it_refused(serve: Serve) -> None:
    base = serve()
    empty = _login_form(base, "", "")
    assert (empty.status, _alert(empty)) == (422, "enter a user name and a password")
    wrong = _login_form(base, "it", "not-the-password")
    assert (wrong.status, _alert(wrong)) == (401, "wrong user name or password")
    for answer in (empty, wrong):
        assert "dicomnode_session" not in answer.cookies() and 'name="password"' in answer.text  # the form again


def test_logging_out_ends_the_session(serve: Serve) -> None:
    console = Console(serve())
    assert console.get("/ui/").status == 200
    out = console.post("/ui/logout", page="/ui/")
    assert (out.status, out.header("Location")) == (303, "/ui/login")
    assert out.cookies()["dicomnode_session"].startswith('dicomnode_session=""')  # the browser forgets it
    after = console.get("/ui/")  # the old cookie, sent again: the session is gone on the node too
    assert after.status == 303 and after.header("Location") == "/ui/login"


def test_the_studies_list_filters_and_refuses_a_filter_it_cannot_read(serve: Serve, settings: Settings,
                                                                      sessions: sessionmaker[Session]) -> None:
    series = make_series(n_slices=2, rows=8, columns=8)
    spool(settings, sessions, series)  # received from the AE title PACS, today
    study_uid = str(series[0].StudyInstanceUID)
    console = Console(serve())
    today = dt.datetime.now(dt.UTC).date()

    def listed(query: str) -> bool:
        page = console.get(f"/ui/studies?{query}")
        assert page.status == 200, (query, page.status, _alert(page))
        return study_uid in page.text

    assert listed("") and listed("state=receiving") and listed("ae=PACS") and listed(f"since={today}")
    assert not listed("state=routed") and not listed("ae=ELSEWHERE")
    assert not listed(f"since={today + dt.timedelta(days=1)}")
    bad_state = console.get("/ui/studies?state=finished-ish")
    assert (bad_state.status, _alert(bad_state)) == (422, "no study state 'finished-ish'")
    bad_date = console.get("/ui/studies?since=yesterday")
    assert (bad_date.status, _alert(bad_date)) == (422, "since must be a date (YYYY-MM-DD)")
    assert study_uid not in bad_state.text + bad_date.text


def test_a_study_page_shows_the_study_and_one_not_on_the_node_is_404(serve: Serve, settings: Settings,
                                                                    sessions: sessionmaker[Session]) -> None:
    series = make_series(n_slices=2, rows=8, columns=8)
    spool(settings, sessions, series)
    console = Console(serve())
    page = console.get(f"/ui/studies/{series[0].StudyInstanceUID}")
    assert page.status == 200 and str(series[0].StudyInstanceUID) in page.text
    assert "receiving" in page.text  # its state
    missing = console.get("/ui/studies/1.2.3.4.5.6.7")
    assert (missing.status, _alert(missing)) == (404, "no such study on the node")


def test_the_job_buttons_answer_for_a_job_not_there_or_not_in_their_state(serve: Serve, settings: Settings,
                                                                        sessions: sessionmaker[Session]) -> None:
    series = make_series(n_slices=2, rows=8, columns=8)
    spool(settings, sessions, series)
    job_id = queue_job(sessions, str(series[0].SeriesInstanceUID))
    console = Console(serve())
    for path in ("/ui/jobs/0/retry", "/ui/jobs/99999/cancel", f"/ui/jobs/{2**63}/retry"):
        answer = console.post(path)
        assert (answer.status, _alert(answer)) == (404, "no such job"), path
    queued = console.post(f"/ui/jobs/{job_id}/retry")  # retry is for a dead-lettered job
    assert (queued.status, _alert(queued)) == (409, f"job {job_id} is queued, not dead_letter")
    cancelled = console.post(f"/ui/jobs/{job_id}/cancel")
    assert (cancelled.status, _notice(cancelled)) == (200, f"job {job_id} cancelled")
    again = console.post(f"/ui/jobs/{job_id}/cancel")  # cancelled: in the dead letter
    assert (again.status, _alert(again)) == (409, f"job {job_id} is dead_letter, not queued")
    bad_state = console.get("/ui/jobs?state=stuck")
    assert (bad_state.status, _alert(bad_state)) == (422, "no job state 'stuck'")
    dead = console.get(f"/ui/jobs?state={JobStatus.DEAD_LETTER.value}").text
    assert "cancelled by operator it" in dead and "cancelled by operator it" not in console.get(
        f"/ui/jobs?state={JobStatus.QUEUED.value}").text
