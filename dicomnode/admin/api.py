"""The admin API (FastAPI): login/logout, studies, jobs, peers and rules, health, readiness, metrics.

Every /api/ call but login needs ``Authorization: Bearer <token>``. The ``admin`` role may change things
and sees patient names and IDs (each such view is audited as Instances Accessed); the ``viewer`` role
may only read, with identifiers masked; the ``sender`` role may only use DICOMweb (/dicomweb,
:mod:`dicomnode.admin.dicomweb`). Logins, failed login bursts, logouts and changes are audited
with the user and address. OpenAPI: ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import config_store
from dicomnode.admin import auth
from dicomnode.admin import job_actions as jobs
from dicomnode.admin.health import Readiness, readiness
from dicomnode.admin.rule_tester import SeriesVerdict, judge, study_headers
from dicomnode.admin.schemas import (
    DestinationBody,
    EchoResult,
    Health,
    JobView,
    Listing,
    LoginRequest,
    PeerBody,
    RuleBody,
    StudyList,
    Token,
)
from dicomnode.admin.server import AdminServer, start_server
from dicomnode.admin.studies import disk_status, study_rows, study_timeline
from dicomnode.admin.throttle import LoginThrottle
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.errors import IllegalTransition
from dicomnode.jobs.status import JobStatus, StudyState
from dicomnode.monitoring.node import AdminMetrics, node_registry
from dicomnode.send.scu import echo
from dicomnode.settings import AdminUser, Destination, Peer, Rule, Settings

_NAME = r"^[A-Za-z0-9 _.\-]{1,64}$"
_UID = r"^[0-9.]{1,64}$"


@dataclass(frozen=True)
class AdminContext:
    """What the admin app needs: settings, database, the models this process runs (None: none), and the
    Prometheus registry that ``/metrics`` serves (other parts may register into it)."""

    settings: Settings
    sessions: sessionmaker[Session]
    models: tuple[str, ...] | None = None
    registry: CollectorRegistry | None = None
    default_rules: tuple[Rule, ...] = ()

    def rules(self) -> list[Rule]:
        """The routing rules in force now (configured, stored, then the models' defaults)."""
        return config_store.runtime_rules(self.settings, self.sessions, self.default_rules)


@dataclass
class _State:
    ctx: AdminContext
    accounts: auth.Accounts
    throttle: LoginThrottle
    registry: CollectorRegistry
    metrics: AdminMetrics
    pbkdf2: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))


def _state(request: Request) -> _State:
    state: _State = request.app.state.admin
    return state


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def token_user(request: Request, authorization: str) -> AdminUser:
    """The user whose live bearer token ``authorization`` carries (401 without one), any role."""
    state = _state(request)
    token = authorization[7:].strip() if authorization.startswith("Bearer ") else ""
    with state.ctx.sessions() as session:
        name = auth.session_user(session, token) if token else None
    user = state.accounts.find(name) if name is not None else None
    if user is None:
        raise HTTPException(401, "log in first (POST /api/login)", headers={"WWW-Authenticate": "Bearer"})
    return user


def current_user(request: Request, authorization: Annotated[str, Header()] = "") -> AdminUser:
    """The logged-in admin or viewer (401 without a live token, 403 for the sender role, which may use
    only /dicomweb); the role comes from the configuration."""
    user = token_user(request, authorization)
    if user.role == "sender":
        raise HTTPException(403, "the sender role may use only /dicomweb")
    return user


def admin_user(user: Annotated[AdminUser, Depends(current_user)]) -> AdminUser:
    if user.role != "admin":
        raise HTTPException(403, "the viewer role may not change anything")
    return user


User = Annotated[AdminUser, Depends(current_user)]
Admin = Annotated[AdminUser, Depends(admin_user)]


def _login(request: Request, body: LoginRequest, response: Response) -> Token:
    state, address = _state(request), _address(request)
    settings = state.ctx.settings
    keys = [f"address {address}", f"user {body.user}"]
    wait = state.throttle.wait_seconds(keys)
    if wait > 0:  # refused before any PBKDF2 run: a flood costs the node nothing
        state.metrics.logins.labels("throttled").inc()
        raise HTTPException(429, "too many failed logins: try again later",
                            headers={"Retry-After": str(int(wait) + 1)})
    started = False
    with state.pbkdf2:  # one password check at a time, so that a login flood cannot take every core
        if state.throttle.wait_seconds(keys) > 0:  # throttled while it waited for its turn
            state.metrics.logins.labels("throttled").inc()
            raise HTTPException(429, "too many failed logins: try again later", headers={"Retry-After": "1"})
        user = state.accounts.authenticate(body.user, body.password)
        if user is None:
            started = state.throttle.failed(keys)
    if user is None:
        state.metrics.logins.labels("failure").inc()
        if started:  # the first failure of a burst: one audit row, not one per try
            with session_scope(state.ctx.sessions) as session:
                record(session, AuditEvent.USER_LOGIN_FAILED, Outcome.MINOR_FAILURE, actor=body.user[:128],
                       address=address, reason="wrong user name or password", security_alert=True,
                       burst=f"further failures from {address} or for this user within "
                             f"{settings.admin_login_burst_seconds:g} s are throttled, not recorded")
        raise HTTPException(401, "wrong user name or password")
    state.throttle.succeeded([f"user {body.user}"])
    state.metrics.logins.labels("success").inc()
    with session_scope(state.ctx.sessions) as session:
        token = auth.open_session(session, user.name, settings.admin_session_minutes)
        record(session, AuditEvent.USER_LOGIN, actor=user.name, address=address, role=user.role)
    return Token(token=token, expires_in=int(settings.admin_session_minutes * 60), role=user.role)


def _logout(request: Request, authorization: Annotated[str, Header()] = "") -> Response:
    state = _state(request)
    token = authorization[7:].strip() if authorization.startswith("Bearer ") else ""
    with session_scope(state.ctx.sessions) as session:
        name = auth.close_session(session, token) if token else None
        if name is not None:
            record(session, AuditEvent.USER_LOGOUT, actor=name, address=_address(request))
    if name is None:
        raise HTTPException(401, "not logged in")
    return Response(status_code=204)


def _phi_viewed(request: Request, user: AdminUser, studies: list[dict[str, Any]], what: str) -> None:
    """Audit an admin's view of patient names and IDs (DICOM Instances Accessed)."""
    if user.role != "admin" or not studies:
        return
    with session_scope(_state(request).ctx.sessions) as session:
        for study in studies:
            record(session, AuditEvent.INSTANCES_ACCESSED, actor=user.name, study_uid=study["study_uid"],
                   patient_id=study["patient_id"] or None, patient_name=study["patient_name"] or None,
                   address=_address(request), reason=f"{what} viewed in the admin API")


def _studies(request: Request, user: User, state: StudyState | None = None,
             ae: Annotated[str | None, Query(max_length=16)] = None,
             limit: Annotated[int, Query(ge=1, le=500)] = 100) -> StudyList:
    ctx = _state(request).ctx
    rows = study_rows(ctx.sessions, None, limit, phi=user.role == "admin", state=state, calling_ae=ae)
    _phi_viewed(request, user, rows, "study list")
    return StudyList(disk=disk_status(ctx.settings), studies=rows)


def _one_study(request: Request, study_uid: str, user: User) -> dict[str, Any]:
    ctx = _state(request).ctx
    rows = study_rows(ctx.sessions, study_uid, phi=user.role == "admin")
    if not rows:
        raise HTTPException(404, "no such study")
    _phi_viewed(request, user, rows, "study")
    return {**rows[0], "timeline": study_timeline(ctx.sessions, study_uid)}


def _rule_test(request: Request, study_uid: Annotated[str, Path(pattern=_UID)], _user: User) -> list[SeriesVerdict]:
    ctx = _state(request).ctx
    headers = study_headers(ctx.sessions, study_uid)
    if headers is None:
        raise HTTPException(404, "no such study")
    return judge(ctx.rules(), headers)


def _jobs(request: Request, _user: User, state: JobStatus | None = None,
          limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[JobView]:
    return [JobView(**row) for row in jobs.job_rows(_state(request).ctx.sessions, state, limit=limit)]


def _job(request: Request, job_id: int, _user: User) -> JobView:
    rows = jobs.job_rows(_state(request).ctx.sessions, job_id=job_id)
    if not rows:
        raise HTTPException(404, "no such job")
    return JobView(**rows[0])


def _change_job(request: Request, job_id: int, user: AdminUser, action: str) -> JobView:
    try:
        with session_scope(_state(request).ctx.sessions) as session:
            (jobs.retry if action == "retry" else jobs.cancel)(session, job_id, user.name)
    except LookupError:
        raise HTTPException(404, "no such job") from None
    except IllegalTransition as exc:
        raise HTTPException(409, str(exc)) from None
    return _job(request, job_id, user)


def _retry(request: Request, job_id: int, user: Admin) -> JobView:
    return _change_job(request, job_id, user, "retry")


def _cancel(request: Request, job_id: int, user: Admin) -> JobView:
    return _change_job(request, job_id, user, "cancel")


def _peers(request: Request, _user: User) -> Listing:
    ctx = _state(request).ctx
    with ctx.sessions() as session:
        stored = [p.model_dump() for p in config_store.list_peers(session)]
    return Listing(configured=[p.model_dump() for p in ctx.settings.known_peers], stored=stored)


def _put_peer(request: Request, ae_title: Annotated[str, Path(pattern=_NAME)], body: PeerBody,
              user: Admin) -> dict[str, Any]:
    peer = Peer(ae_title=ae_title, **body.model_dump())
    with session_scope(_state(request).ctx.sessions) as session:
        config_store.put_peer(session, peer, user=user.name, address=_address(request))
    return peer.model_dump()


def _delete_peer(request: Request, ae_title: Annotated[str, Path(pattern=_NAME)], user: Admin) -> Response:
    with session_scope(_state(request).ctx.sessions) as session:
        found = config_store.delete_peer(session, ae_title, user=user.name, address=_address(request))
    if not found:
        raise HTTPException(404, "no such peer")
    return Response(status_code=204)


def _destinations(request: Request, _user: User) -> Listing:
    ctx = _state(request).ctx
    with ctx.sessions() as session:
        stored = [d.model_dump() for d in config_store.list_destinations(session)]
    return Listing(configured=[d.model_dump() for d in config_store.runtime_destinations(ctx.settings, ctx.sessions)
                               if d.name not in {s["name"] for s in stored}], stored=stored)


def _put_destination(request: Request, name: Annotated[str, Path(pattern=_NAME)], body: DestinationBody,
                     user: Admin) -> dict[str, Any]:
    if name == config_store.PACS_DESTINATION:
        raise HTTPException(409, "the PACS destination comes from the configuration (pacs)")
    destination = Destination(name=name, **body.model_dump())
    with session_scope(_state(request).ctx.sessions) as session:
        config_store.put_destination(session, destination, user=user.name, address=_address(request))
    return destination.model_dump()


def _delete_destination(request: Request, name: Annotated[str, Path(pattern=_NAME)], user: Admin) -> Response:
    with session_scope(_state(request).ctx.sessions) as session:
        found = config_store.delete_destination(session, name, user=user.name, address=_address(request))
    if not found:
        raise HTTPException(404, "no such stored destination")
    return Response(status_code=204)


def echo_peer(settings: Settings, peer: Peer) -> EchoResult:
    """A real C-ECHO (PS3.7 9.3.5) to ``peer``, with its answer and round-trip time."""
    started = time.perf_counter()
    status = echo(settings, peer)
    rtt = (time.perf_counter() - started) * 1000
    return EchoResult(target=str(peer), ok=status == 0, rtt_ms=round(rtt, 1),
                      status="no association" if status is None else f"0x{status:04X}")


def _echo_destination(request: Request, name: Annotated[str, Path(pattern=_NAME)], _user: User) -> EchoResult:
    ctx = _state(request).ctx
    found = [d for d in config_store.runtime_destinations(ctx.settings, ctx.sessions) if d.name == name]
    if not found:
        raise HTTPException(404, "no such destination")
    return echo_peer(ctx.settings, found[0].peer)


def _echo_peer(request: Request, ae_title: Annotated[str, Path(pattern=_NAME)], _user: User) -> EchoResult:
    ctx = _state(request).ctx
    found = [p for p in config_store.runtime_peers(ctx.settings, ctx.sessions) if p.ae_title == ae_title]
    if not found:
        raise HTTPException(404, "no such peer")
    return echo_peer(ctx.settings, found[0])


def _rules(request: Request, _user: User) -> Listing:
    ctx = _state(request).ctx
    with ctx.sessions() as session:
        stored = [_rule_view(r) for r in config_store.list_rules(session)]
    return Listing(configured=[_rule_view(r) for r in ctx.settings.rules], stored=stored)


def _put_rule(request: Request, name: Annotated[str, Path(pattern=_NAME)], body: RuleBody,
              user: Admin) -> dict[str, Any]:
    rule = Rule(name=name, **body.model_dump())
    with session_scope(_state(request).ctx.sessions) as session:
        config_store.put_rule(session, rule, user=user.name, address=_address(request))
    return _rule_view(rule)


def _rule_view(rule: Rule) -> dict[str, Any]:
    """A rule as the API shows it: ``destinations`` only when it names some (every destination otherwise)."""
    return rule.model_dump(exclude=None if rule.destinations else {"destinations"})


def _delete_rule(request: Request, name: Annotated[str, Path(pattern=_NAME)], user: Admin) -> Response:
    with session_scope(_state(request).ctx.sessions) as session:
        found = config_store.delete_rule(session, name, user=user.name, address=_address(request))
    if not found:
        raise HTTPException(404, "no such rule")
    return Response(status_code=204)


def _healthz(request: Request) -> Health:
    """Liveness: the process answers. The disk guard is shown, not judged (that is /readyz)."""
    disk = disk_status(_state(request).ctx.settings)
    return Health(status="ok", disk=disk)


def _readyz(request: Request) -> JSONResponse:
    ctx = _state(request).ctx
    ready: Readiness = readiness(ctx.settings, ctx.sessions, ctx.models)
    return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)


def _metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).registry), media_type=CONTENT_TYPE_LATEST)


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    """Every malformed body or parameter is a 422 naming the field, never a 500 (and never echoes input)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError | ValidationError) else []
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


def create_app(ctx: AdminContext) -> FastAPI:
    """The admin app for ``ctx``: every route, the OpenAPI document, and the exception handlers."""
    registry, metrics = node_registry(ctx.settings, ctx.sessions, ctx.registry)
    settings = ctx.settings
    app = FastAPI(title="dicomnode admin API", version="1", docs_url="/docs", redoc_url=None)
    app.state.admin = _State(
        ctx=ctx, accounts=auth.Accounts(settings.admin_users), registry=registry, metrics=metrics,
        throttle=LoginThrottle(settings.admin_login_free_failures, settings.admin_login_max_delay_seconds,
                               settings.admin_login_burst_seconds))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ValidationError, _invalid)
    add = app.add_api_route
    add("/healthz", _healthz, methods=["GET"], tags=["health"])
    add("/readyz", _readyz, methods=["GET"], tags=["health"], response_model=Readiness,
        responses={503: {"model": Readiness}})
    add("/metrics", _metrics, methods=["GET"], tags=["health"], response_class=Response)
    add("/api/login", _login, methods=["POST"], tags=["session"])
    add("/api/logout", _logout, methods=["POST"], tags=["session"], status_code=204, response_class=Response)
    add("/api/studies", _studies, methods=["GET"], tags=["studies"])
    add("/api/studies/{study_uid}", _one_study, methods=["GET"], tags=["studies"])
    add("/api/studies/{study_uid}/rule-test", _rule_test, methods=["GET"], tags=["rules"])
    add("/api/jobs", _jobs, methods=["GET"], tags=["jobs"])
    add("/api/jobs/{job_id}", _job, methods=["GET"], tags=["jobs"])
    add("/api/jobs/{job_id}/retry", _retry, methods=["POST"], tags=["jobs"])
    add("/api/jobs/{job_id}/cancel", _cancel, methods=["POST"], tags=["jobs"])
    add("/api/peers", _peers, methods=["GET"], tags=["peers"])
    add("/api/peers/{ae_title}", _put_peer, methods=["PUT"], tags=["peers"])
    add("/api/peers/{ae_title}", _delete_peer, methods=["DELETE"], tags=["peers"], status_code=204,
        response_class=Response)
    add("/api/peers/{ae_title}/echo", _echo_peer, methods=["POST"], tags=["peers"])
    add("/api/destinations", _destinations, methods=["GET"], tags=["destinations"])
    add("/api/destinations/{name}", _put_destination, methods=["PUT"], tags=["destinations"])
    add("/api/destinations/{name}", _delete_destination, methods=["DELETE"], tags=["destinations"],
        status_code=204, response_class=Response)
    add("/api/destinations/{name}/echo", _echo_destination, methods=["POST"], tags=["destinations"])
    add("/api/rules", _rules, methods=["GET"], tags=["rules"])
    add("/api/rules/{name}", _put_rule, methods=["PUT"], tags=["rules"])
    add("/api/rules/{name}", _delete_rule, methods=["DELETE"], tags=["rules"], status_code=204,
        response_class=Response)
    add("/", lambda: RedirectResponse("/ui/", status_code=307), methods=["GET"], include_in_schema=False)
    from dicomnode.admin import console, dicomweb  # they build on this module's functions

    console.mount(app)
    app.include_router(dicomweb.router)
    return app


def start_admin(ctx: AdminContext) -> AdminServer:
    """Serve the admin app on ``admin_host:admin_port`` (uvicorn, in a background thread)."""
    return start_server(create_app(ctx), ctx.settings)
