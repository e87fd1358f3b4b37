"""The web console: server-rendered pages (Jinja2) on the same functions as the API and the CLI.

Usable without JavaScript: every action is a form. The login sets an HttpOnly, SameSite=Strict cookie
holding the same kind of token as the API's (stored hashed, expiring; Secure when the console is served
over https). Every POST, login and logout included, must come from the console's own origin with its
form's token (:mod:`dicomnode.admin.csrf`); any other is refused with 403 and audited. Redirects are
relative, never built from the Host header. The viewer role sees masked identifiers and no change
buttons; the server refuses changes from it whatever the page shows.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.templating import Jinja2Templates

from dicomnode import config_store
from dicomnode.admin import configuration, csrf, deps
from dicomnode.admin import job_actions as jobs
from dicomnode.admin.health import readiness
from dicomnode.admin.login import log_in, log_out
from dicomnode.admin.rule_tester import file_headers, judge, study_headers
from dicomnode.admin.schemas import JOB_ID_MAX, LoginRequest
from dicomnode.admin.studies import disk_status, study_rows, study_timeline
from dicomnode.audit.anchor import read_checkpoints
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.models import AuditRecord
from dicomnode.audit.trail import verify
from dicomnode.db import session_scope, utcnow
from dicomnode.errors import IllegalTransition
from dicomnode.inference.registry import load_manifests, suspended
from dicomnode.jobs.models import Instance, Job, Study
from dicomnode.jobs.status import JobStatus, StudyState
from dicomnode.settings import AdminUser, Destination, Peer, Rule, Settings

COOKIE = "dicomnode_session"
MAX_UPLOAD_FILES = 2000
UPLOAD_CHUNK_BYTES = 2**20


class LoginRedirect(Exception):
    """Raised for a page asked for without a live session cookie: the app answers with the login page."""


async def _same_origin(request: Request) -> None:
    """Every request but GET/HEAD/OPTIONS: from the console's own origin, with its form's token
    (:mod:`dicomnode.admin.csrf`); raises :class:`~dicomnode.admin.csrf.Refused` otherwise."""
    if request.method in csrf.SAFE_METHODS:
        return
    csrf.check_origin(request)  # before the body is read, when the route has no form fields
    if request.url.path == "/ui/login":
        expected = request.cookies.get(csrf.LOGIN_COOKIE, "")
    elif session := request.cookies.get(COOKIE, ""):
        expected = csrf.session_form_token(session)
    else:
        raise LoginRedirect
    form = await request.form(max_files=MAX_UPLOAD_FILES)  # the rule tester's limit; parsed once, then cached
    sent = form.get(csrf.FIELD)
    csrf.check_token(sent if isinstance(sent, str) else "", expected)


router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse,
                   dependencies=[Depends(_same_origin)])
_templates = Jinja2Templates(directory=str(FsPath(__file__).parent / "templates"))


async def to_login(_request: Request, _exc: Exception) -> Response:
    """The answer to :class:`LoginRedirect`: 303 to the login page."""
    return RedirectResponse("/ui/login", status_code=303)


async def refused(request: Request, exc: Exception) -> Response:
    """The answer to :class:`~dicomnode.admin.csrf.Refused`: 403, nothing changed, and a security alert
    in the audit trail (one row per burst from an address, with the count)."""
    ctx, address = deps.state(request).ctx, deps.client_address(request)
    owner = await run_in_threadpool(deps.session_owner, request, request.cookies.get(COOKIE, ""))
    reason = f"{request.method} {request.url.path[:120]} refused: {exc}"
    await run_in_threadpool(ctx.bursts.refused, AuditEvent.REQUEST_REFUSED,  # type: ignore[union-attr]
                            f"console request refused from {address}", actor=owner.name if owner else "",
                            address=address, reason=reason, security_alert=True)
    return _page(request, "base.html", "Request refused", None, 403,
                 error="This request did not come from this console's own page, so nothing was changed. "
                       "Open the console again and repeat it there.")


def _need(request: Request, admin: bool = False) -> AdminUser:
    """The user of the session cookie, when the role may read (``admin``: may change); see
    :func:`dicomnode.admin.deps.permitted`."""
    user = deps.session_owner(request, request.cookies.get(COOKIE, ""))
    if user is None:
        raise LoginRedirect
    return deps.permitted(user, change=admin)


def _page(request: Request, name: str, title: str, user: AdminUser | None, status: int = 200,
          **values: Any) -> HTMLResponse:
    """``name`` rendered; its forms carry the session's token (the login form's: ``values["csrf_token"]``)."""
    values.setdefault("csrf_token", csrf.session_form_token(request.cookies[COOKIE])
                      if user is not None and request.cookies.get(COOKIE) else "")
    return _templates.TemplateResponse(request, name, {"title": title, "user": user, "is_admin": bool(
        user and user.role == "admin"), **values}, status_code=status)


def _sparkline(times: list[dt.datetime], now: dt.datetime) -> tuple[str, int]:
    """An SVG polyline of counts per hour over the last 24 hours."""
    counts = [0] * 24
    for at in times:
        at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
        hours = int((now - at).total_seconds() // 3600)
        if 0 <= hours < 24:
            counts[23 - hours] += 1
    top = max(counts) or 1
    points = " ".join(f"{i * 10},{28 - 26 * c / top:.1f}" for i, c in enumerate(counts))
    return f'<polyline fill="none" stroke="#1d3557" stroke-width="2" points="{points}"/>', sum(counts)


def _oldest_waiting(sessions: sessionmaker[Session]) -> dict[str, str] | None:
    with sessions() as session:
        job = session.scalar(select(Job).where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
                             .order_by(Job.created_at).limit(1))
        if job is not None:
            retry = f", next try {job.run_after.isoformat()}" if job.run_after else ""
            return {"study_uid": job.series.study.study_uid,
                    "why": f"job {job.id} ({job.model_id}) is {job.status.value}: "
                           f"{job.reason or 'waiting for a worker'}{retry}"}
        study = session.scalar(select(Study).where(Study.state == StudyState.RECEIVING)
                               .order_by(Study.first_received_at).limit(1))
        if study is not None:
            return {"study_uid": study.study_uid, "why": study.state_reason or "instances still arriving"}
    return None


@router.get("/")
@router.get("/ui")
def home() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
def dashboard(request: Request) -> Response:
    user = _need(request)
    ctx = deps.state(request).ctx
    now = utcnow()
    since = now - dt.timedelta(hours=24)
    with ctx.sessions() as session:
        queue = {s.value: 0 for s in JobStatus}
        queue.update({s.value: n for s, n in session.execute(select(Job.status, func.count()).group_by(Job.status))})
        received = list(session.scalars(select(Instance.received_at).where(Instance.received_at >= since)))
        created = list(session.scalars(select(Job.created_at).where(Job.created_at >= since)))
    spark_instances, total_instances = _sparkline(received, now)
    spark_jobs, total_jobs = _sparkline(created, now)
    return _page(request, "dashboard.html", "Dashboard", user,
                 ready=readiness(ctx.settings, ctx.sessions, ctx.models, ctx.unavailable), models=_model_rows(ctx),
                 queue=queue, disk=disk_status(ctx.settings), oldest=_oldest_waiting(ctx.sessions),
                 spark_instances=spark_instances, total_instances=total_instances, spark_jobs=spark_jobs,
                 total_jobs=total_jobs)


def _model_rows(ctx: deps.AdminContext) -> list[dict[str, str]]:
    """Each installed model with whether its rules route now, or why not (unavailable and its reason, or a
    demonstration model while ``demo_models`` is off)."""
    manifests = load_manifests(ctx.settings.models_dir)
    held = suspended(manifests, ctx.unavailable, ctx.settings.demo_models)
    return [{"id": m.id, "version": m.version, "task": m.task,
             "state": "unavailable" if m.id in ctx.unavailable else "off" if m.id in held else "routed",
             "why": held.get(m.id, "demonstration model (demo_models = true)" if m.demonstration else "")}
            for m in manifests.values()]


@router.get("/ui/login")
def login_page(request: Request) -> Response:
    return _login_view(request)


def _login_view(request: Request, status: int = 200, error: str = "") -> Response:
    """The login form, with its token (double submit: the same value in a cookie only /ui/login gets)."""
    token = csrf.login_form_token(request.cookies.get(csrf.LOGIN_COOKIE))
    response = _page(request, "login.html", "Log in", None, status, error=error, csrf_token=token)
    response.set_cookie(csrf.LOGIN_COOKIE, token, httponly=True, samesite="strict",
                        secure=csrf.secure_cookies(request), path="/ui/login")
    return response


@router.post("/ui/login")
def login(request: Request, user: Annotated[str, Form(max_length=128)] = "",
          password: Annotated[str, Form(max_length=1024)] = "") -> Response:
    try:
        token = log_in(request, LoginRequest(user=user, password=password))
    except ValidationError:
        return _login_view(request, 422, "enter a user name and a password")
    except HTTPException as exc:
        return _login_view(request, exc.status_code, str(exc.detail))
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(COOKIE, token.token, max_age=token.expires_in, httponly=True, samesite="strict",
                        secure=csrf.secure_cookies(request), path="/")
    response.delete_cookie(csrf.LOGIN_COOKIE, path="/ui/login")
    return response


@router.post("/ui/logout")
def logout(request: Request) -> Response:
    log_out(request, request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", secure=csrf.secure_cookies(request), httponly=True, samesite="strict")
    return response


@router.get("/ui/studies")
def studies(request: Request, state: str = "", ae: str = "", since: str = "") -> Response:
    user = _need(request)
    ctx = deps.state(request).ctx
    states = [s.value for s in StudyState]
    if state and state not in states:
        return _page(request, "studies.html", "Studies", user, 422, error=f"no study state {state[:16]!r}",
                     studies=[], states=states, state="", ae=ae, since=since)
    rows = study_rows(ctx.sessions, None, 200, phi=user.role == "admin", state=StudyState(state) if state else None,
                      calling_ae=ae[:16] or None)
    if since:
        try:
            floor = dt.date.fromisoformat(since).isoformat()
        except ValueError:
            return _page(request, "studies.html", "Studies", user, 422, error="since must be a date (YYYY-MM-DD)",
                         studies=[], states=[s.value for s in StudyState], state=state, ae=ae, since="")
        rows = [r for r in rows if r["last_received_at"] >= floor]
    deps.phi_viewed(request, user, rows, "study list")
    return _page(request, "studies.html", "Studies", user, studies=rows, states=[s.value for s in StudyState],
                 state=state, ae=ae, since=since)


@router.get("/ui/studies/{study_uid}")
def study(request: Request, study_uid: str) -> Response:
    user = _need(request)
    ctx = deps.state(request).ctx
    rows = study_rows(ctx.sessions, study_uid[:64], phi=user.role == "admin")
    if not rows:
        return _page(request, "base.html", "No such study", user, 404, error="no such study on the node")
    deps.phi_viewed(request, user, rows, "study")
    return _page(request, "study.html", f"Study {study_uid}", user, study=rows[0],
                 timeline=study_timeline(ctx.sessions, study_uid))


@router.get("/ui/jobs")
def jobs_page(request: Request, state: str = "") -> Response:
    return _jobs_view(request, state)


def _jobs_view(request: Request, state: str = "", notice: str = "", error: str = "", status: int = 200) -> Response:
    user = _need(request)
    ctx = deps.state(request).ctx
    try:
        wanted = JobStatus(state) if state else None
    except ValueError:
        wanted, error, status = None, f"no job state {state!r}", 422
    return _page(request, "jobs.html", "Jobs", user, status, jobs=jobs.job_rows(ctx.sessions, wanted),
                 states=[s.value for s in JobStatus], state=state, notice=notice, error=error)


def job_action(request: Request, job_id: int, action: str) -> Response:
    user = _need(request, admin=True)
    ctx = deps.state(request).ctx
    if not 1 <= job_id <= JOB_ID_MAX:
        return _jobs_view(request, error="no such job", status=404)
    try:
        with session_scope(ctx.sessions) as session:
            (jobs.retry if action == "retry" else jobs.cancel)(session, job_id, user.name)
    except LookupError:  # as the API answers it (admin/api.py)
        return _jobs_view(request, error="no such job", status=404)
    except IllegalTransition as exc:
        return _jobs_view(request, error=str(exc), status=409)
    return _jobs_view(request, notice=f"job {job_id} {'queued again' if action == 'retry' else 'cancelled'}")


@router.post("/ui/jobs/{job_id}/retry")
def retry_job(request: Request, job_id: int) -> Response:
    return job_action(request, job_id, "retry")


@router.post("/ui/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: int) -> Response:
    return job_action(request, job_id, "cancel")


@router.get("/ui/peers")
def peers_page(request: Request) -> Response:
    return _peers_view(request)


def _peers_view(request: Request, echo: Any = None, error: str = "", notice: str = "", status: int = 200) -> Response:
    user = _need(request)
    ctx = deps.state(request).ctx
    with ctx.sessions() as session:
        added_peers = config_store.list_peers(session)
        added_destinations = config_store.list_destinations(session)
    added_names = {d.name for d in added_destinations}
    peers = [(p, "configuration") for p in ctx.settings.known_peers] + [(p, "added") for p in added_peers]
    destinations = [(d, "added" if d.name in added_names else "configuration")
                    for d in config_store.runtime_destinations(ctx.settings, ctx.sessions)]
    return _page(request, "peers.html", "Peers & destinations", user, status, peers=peers,
                 destinations=destinations, echo=echo, error=error, notice=notice)


@router.post("/ui/peers")
def save_peer(request: Request, ae_title: Annotated[str, Form()], host: Annotated[str, Form()] = "127.0.0.1",
              port: Annotated[str, Form()] = "104", tls: Annotated[str, Form()] = "",
              tls_subject_cn: Annotated[str, Form(max_length=64)] = "",
              tls_sha256: Annotated[str, Form(max_length=95)] = "") -> Response:
    user = _need(request, admin=True)
    try:
        peer = Peer(ae_title=ae_title, host=host, port=port, tls=tls == "true",  # type: ignore[arg-type]
                    tls_subject_cn=tls_subject_cn or None, tls_sha256=tls_sha256 or None)
    except ValidationError as exc:
        return _peers_view(request, error=_first_error(exc), status=422)
    configuration.save_peer(request, user, peer)
    return _peers_view(request, notice=f"peer {peer.ae_title} saved: it may call in now")


@router.post("/ui/peers/{ae_title}/delete")
def delete_peer(request: Request, ae_title: str) -> Response:
    user = _need(request, admin=True)
    found = configuration.remove_peer(request, user, ae_title)
    return _peers_view(request, notice=f"peer {ae_title} removed" if found else "",
                       error="" if found else "no such peer")


@router.post("/ui/destinations")
def save_destination(request: Request, name: Annotated[str, Form()], ae_title: Annotated[str, Form()],
                     host: Annotated[str, Form()] = "127.0.0.1", port: Annotated[str, Form()] = "104",
                     tls: Annotated[str, Form()] = "", send: Annotated[list[str] | None, Form()] = None) -> Response:
    user = _need(request, admin=True)
    if name == config_store.PACS_DESTINATION:
        return _peers_view(request, error="the PACS destination comes from the configuration", status=409)
    try:
        destination = Destination.model_validate({"name": name, "ae_title": ae_title, "host": host, "port": port,
                                                  "tls": tls == "true", "send": send or []})
    except ValidationError as exc:
        return _peers_view(request, error=_first_error(exc), status=422)
    configuration.save_destination(request, user, destination)
    return _peers_view(request, notice=f"destination {name} saved: it gets the next results")


@router.post("/ui/destinations/{name}/delete")
def delete_destination(request: Request, name: str) -> Response:
    user = _need(request, admin=True)
    found = configuration.remove_destination(request, user, name)
    return _peers_view(request, notice=f"destination {name} removed" if found else "",
                      error="" if found else "no such destination")


@router.post("/ui/peers/{ae_title}/echo")
def echo_peer(request: Request, ae_title: str) -> Response:
    _need(request)
    ctx = deps.state(request).ctx
    peer = configuration.find_peer(ctx, ae_title)
    if peer is None:
        return _peers_view(request, error="no such peer", status=404)
    if not peer.dialable:
        return _peers_view(request, error=f"peer {ae_title} may call in from {peer.host}, not one host: it cannot "
                                          "be called", status=409)
    return _peers_view(request, echo=configuration.echo_peer(ctx.settings, peer))


@router.post("/ui/destinations/{name}/echo")
def echo_destination(request: Request, name: str) -> Response:
    _need(request)
    ctx = deps.state(request).ctx
    destination = configuration.find_destination(ctx, name)
    if destination is None:
        return _peers_view(request, error="no such destination", status=404)
    return _peers_view(request, echo=configuration.echo_peer(ctx.settings, destination.peer))


@router.get("/ui/rules")
def rules_page(request: Request, study_uid: str = "") -> Response:
    return _rules_view(request, study_uid)


def _rules_view(request: Request, study_uid: str = "", verdicts: Any = None, error: str = "", notice: str = "",
                status: int = 200) -> Response:
    user = _need(request)
    ctx = deps.state(request).ctx
    with ctx.sessions() as session:
        added = {r.name for r in config_store.list_rules(session)}
    configured = {r.name for r in ctx.settings.rules}
    in_force = ctx.rules()
    states = ctx.rule_states(in_force)
    rules = [(r, "added" if r.name in added else "configuration" if r.name in configured else "model default",
              states[r.name]) for r in in_force]
    if study_uid and verdicts is None:
        headers = study_headers(ctx.sessions, study_uid[:64], ctx.settings.max_inflated_bytes)
        if headers is None:
            error, status = "no such study on the node", 404
        else:
            verdicts = judge(in_force, headers, states)
    return _page(request, "rules.html", "Rules", user, status, rules=rules, study_uid=study_uid, verdicts=verdicts,
                 error=error, notice=notice)


@router.post("/ui/rules")
def save_rule(request: Request, name: Annotated[str, Form()], model: Annotated[str, Form()],
              match: Annotated[str, Form(max_length=4096)] = "",
              destinations: Annotated[str, Form(max_length=1024)] = "",
              model_not_installed_ok: Annotated[str, Form(max_length=8)] = "") -> Response:
    user = _need(request, admin=True)
    try:
        pairs = dict(line.split("=", 1) for line in match.splitlines() if line.strip())
        rule = Rule(name=name, model=model, match={k.strip(): v.strip() for k, v in pairs.items()},
                    destinations=[d.strip() for d in destinations.split(",") if d.strip()])
    except ValueError as exc:  # a line without "=", or a pattern refused (ValidationError is a ValueError)
        text = _first_error(exc) if isinstance(exc, ValidationError) else "each match line is Keyword=regex"
        return _rules_view(request, error=text, status=422)
    if model_not_installed_ok != "true":
        try:
            config_store.check_rule_model(rule, load_manifests(deps.state(request).ctx.settings.models_dir))
        except ValueError as exc:
            return _rules_view(request, error=f"{exc}; tick 'Model not installed yet' to save it anyway",
                               status=422)
    configuration.save_rule(request, user, rule)
    return _rules_view(request, notice=f"rule {name} saved: the next sweep uses it")


@router.post("/ui/rules/{name}/delete")
def delete_rule(request: Request, name: str) -> Response:
    user = _need(request, admin=True)
    found = configuration.remove_rule(request, user, name)
    return _rules_view(request, notice=f"rule {name} removed" if found else "", error="" if found else "no such rule")


@router.post("/ui/rules/test")
async def test_upload(request: Request) -> Response:
    """The rule tester on uploaded files (multipart), read into a temporary folder and deleted after."""
    _need(request)
    ctx = deps.state(request).ctx
    async with request.form(max_files=MAX_UPLOAD_FILES) as form:
        uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        with tempfile.TemporaryDirectory(dir=ctx.settings.data_dir) as folder:
            for i, upload in enumerate(uploads):  # copied in chunks: an upload is never whole in memory
                with (FsPath(folder) / f"{i}.dcm").open("wb") as out:
                    while chunk := await upload.read(UPLOAD_CHUNK_BYTES):
                        out.write(chunk)
            headers, skipped = file_headers([FsPath(folder)], ctx.settings.max_inflated_bytes)
    error = f"{len(skipped)} uploaded file(s) are not DICOM" if skipped else ""
    rules = ctx.rules()
    return _rules_view(request, verdicts=judge(rules, headers, ctx.rule_states(rules)), error=error)


@router.get("/ui/audit")
def audit_page(request: Request, since: str = "", until: str = "", event: str = "", actor: str = "",
               study_uid: str = "") -> Response:
    user = _need(request)
    ctx = deps.state(request).ctx
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(200)
    try:
        if since:
            query = query.where(AuditRecord.at >= _when(since))
        if until:
            query = query.where(AuditRecord.at < _when(until))
    except ValueError:
        return _page(request, "audit.html", "Audit", user, 422, error="times must be ISO dates and times",
                     rows=[], verification=_verification(ctx.settings, ctx.sessions),
                     events=[e.value for e in AuditEvent], q={})
    if event:
        query = query.where(AuditRecord.event == event[:48])
    if actor:
        query = query.where(AuditRecord.actor == actor[:128])
    if study_uid:
        query = query.where(AuditRecord.study_uid == study_uid[:64])
    with ctx.sessions() as session:  # the patient columns are never shown here
        rows = [{"id": r.id, "at": r.at.isoformat(timespec="seconds"), "event": r.event, "outcome": r.outcome,
                 "actor": r.actor, "study_uid": r.study_uid, "reason": _reason(r.detail)}
                for r in session.scalars(query)]
    return _page(request, "audit.html", "Audit", user, rows=rows,
                 verification=_verification(ctx.settings, ctx.sessions), events=[e.value for e in AuditEvent],
                 q={"since": since, "until": until, "event": event, "actor": actor, "study_uid": study_uid})


def _verification(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, Any]:
    """The trail's verification against the anchor (as ``dicomnode audit verify --anchor`` does), for the
    page: ``state`` is intact, truncated (the newest rows removed: ``missing`` rows) or broken."""
    path = settings.anchor_path
    try:
        anchors = read_checkpoints(path)
    except FileNotFoundError:
        anchors = []
    except (OSError, ValueError) as exc:
        return {"state": "broken", "rows": 0, "anchors": 0, "at": None,
                "reason": f"the anchor file {path.name} cannot be read: {exc}"}
    with sessions() as session:
        total = int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)
    result = verify(sessions, anchors)
    anchored = max((a.rows for a in anchors), default=0)
    state = ("intact" if result.ok else
             "truncated" if result.rows >= total and anchored > result.rows else "broken")
    return {"state": state, "rows": result.rows, "anchors": len(anchors), "at": result.first_bad_id,
            "missing": anchored - result.rows, "reason": result.reason, "anchor_file": path.name}


def _when(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _reason(detail: str) -> str:
    import json

    try:
        return str(json.loads(detail).get("reason", ""))
    except (ValueError, AttributeError):
        return ""


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error['msg']}" if where else str(error["msg"])

