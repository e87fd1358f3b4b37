"""The admin API (FastAPI): login/logout, studies, jobs, peers and rules, health, readiness, metrics.

Every /api/ call but login needs ``Authorization: Bearer <token>``. The ``admin`` role may change things
and sees patient names and IDs (each such view is audited as Instances Accessed); the ``viewer`` role
may only read, with identifiers masked; the ``sender`` role may only use DICOMweb (/dicomweb,
:mod:`dicomnode.admin.dicomweb`). Logins, failed login bursts, logouts and changes are audited
with the user and address. OpenAPI: ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dicomnode import config_store
from dicomnode.admin import configuration, deps
from dicomnode.admin import job_actions as jobs
from dicomnode.admin.deps import Admin, User
from dicomnode.admin.health import Readiness, readiness
from dicomnode.admin.login import log_in, log_out
from dicomnode.admin.rule_tester import SeriesVerdict, judge, study_headers
from dicomnode.admin.schemas import (
    JOB_ID_MAX,
    NAME_PATTERN,
    UID_PATTERN,
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
from dicomnode.admin.studies import disk_status, study_rows, study_timeline
from dicomnode.db import session_scope
from dicomnode.errors import IllegalTransition
from dicomnode.inference.registry import load_manifests
from dicomnode.jobs.status import JobStatus, StudyState
from dicomnode.settings import AdminUser, Destination, Peer, Rule

router = APIRouter()

Name = Annotated[str, Path(pattern=NAME_PATTERN)]


@router.get("/healthz", tags=["health"])
def _healthz(request: Request) -> Health:
    """Liveness: the process answers. The disk guard is shown, not judged (that is /readyz)."""
    disk = disk_status(deps.state(request).ctx.settings)
    return Health(status="ok", disk=disk)


@router.get("/readyz", tags=["health"], response_model=Readiness, responses={503: {"model": Readiness}})
def _readyz(request: Request) -> JSONResponse:
    ctx = deps.state(request).ctx
    ready: Readiness = readiness(ctx.settings, ctx.sessions, ctx.models, ctx.unavailable)
    return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)


@router.get("/metrics", tags=["health"], response_class=Response)
def _metrics(request: Request) -> Response:
    return Response(generate_latest(deps.state(request).registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/api/login", tags=["session"])
def _login(request: Request, body: LoginRequest) -> Token:
    return log_in(request, body)


@router.post("/api/logout", tags=["session"], status_code=204, response_class=Response)
def _logout(request: Request, authorization: Annotated[str, Header()] = "") -> Response:
    if log_out(request, deps.bearer_token(authorization)) is None:
        raise HTTPException(401, "not logged in")
    return Response(status_code=204)


@router.get("/api/studies", tags=["studies"])
def _studies(request: Request, user: User, state: StudyState | None = None,
             ae: Annotated[str | None, Query(max_length=16)] = None,
             limit: Annotated[int, Query(ge=1, le=500)] = 100) -> StudyList:
    ctx = deps.state(request).ctx
    rows = study_rows(ctx.sessions, None, limit, phi=user.role == "admin", state=state, calling_ae=ae)
    deps.phi_viewed(request, user, rows, "study list")
    return StudyList(disk=disk_status(ctx.settings), studies=rows)


@router.get("/api/studies/{study_uid}", tags=["studies"])
def _one_study(request: Request, study_uid: str, user: User) -> dict[str, Any]:
    ctx = deps.state(request).ctx
    rows = study_rows(ctx.sessions, study_uid, phi=user.role == "admin")
    if not rows:
        raise HTTPException(404, "no such study")
    deps.phi_viewed(request, user, rows, "study")
    return {**rows[0], "timeline": study_timeline(ctx.sessions, study_uid)}


@router.get("/api/studies/{study_uid}/rule-test", tags=["rules"])
def _rule_test(request: Request, study_uid: Annotated[str, Path(pattern=UID_PATTERN)],
               _user: User) -> list[SeriesVerdict]:
    ctx = deps.state(request).ctx
    headers = study_headers(ctx.sessions, study_uid, ctx.settings.max_inflated_bytes)
    if headers is None:
        raise HTTPException(404, "no such study")
    rules = ctx.rules()
    return judge(rules, headers, ctx.rule_states(rules))


@router.get("/api/jobs", tags=["jobs"])
def _jobs(request: Request, _user: User, state: JobStatus | None = None,
          limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[JobView]:
    return [JobView(**row) for row in jobs.job_rows(deps.state(request).ctx.sessions, state, limit=limit)]


@router.get("/api/jobs/{job_id}", tags=["jobs"])
def _job(request: Request, job_id: int, _user: User) -> JobView:
    rows = jobs.job_rows(deps.state(request).ctx.sessions, job_id=job_id) if 1 <= job_id <= JOB_ID_MAX else []
    if not rows:
        raise HTTPException(404, "no such job")
    return JobView(**rows[0])


def _change_job(request: Request, job_id: int, user: AdminUser, action: str) -> JobView:
    if not 1 <= job_id <= JOB_ID_MAX:
        raise HTTPException(404, "no such job")
    try:
        with session_scope(deps.state(request).ctx.sessions) as session:
            (jobs.retry if action == "retry" else jobs.cancel)(session, job_id, user.name)
    except LookupError:
        raise HTTPException(404, "no such job") from None
    except IllegalTransition as exc:
        raise HTTPException(409, str(exc)) from None
    return _job(request, job_id, user)


@router.post("/api/jobs/{job_id}/retry", tags=["jobs"])
def _retry(request: Request, job_id: int, user: Admin) -> JobView:
    return _change_job(request, job_id, user, "retry")


@router.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
def _cancel(request: Request, job_id: int, user: Admin) -> JobView:
    return _change_job(request, job_id, user, "cancel")


@router.get("/api/peers", tags=["peers"])
def _peers(request: Request, _user: User) -> Listing:
    ctx = deps.state(request).ctx
    with ctx.sessions() as session:
        stored = [p.model_dump() for p in config_store.list_peers(session)]
    return Listing(configured=[p.model_dump() for p in ctx.settings.known_peers], stored=stored)


@router.put("/api/peers/{ae_title}", tags=["peers"])
def _put_peer(request: Request, ae_title: Name, body: PeerBody, user: Admin) -> dict[str, Any]:
    peer = Peer(ae_title=ae_title, **body.model_dump())
    configuration.save_peer(request, user, peer)
    return peer.model_dump()


@router.delete("/api/peers/{ae_title}", tags=["peers"], status_code=204, response_class=Response)
def _delete_peer(request: Request, ae_title: Name, user: Admin) -> Response:
    if not configuration.remove_peer(request, user, ae_title):
        raise HTTPException(404, "no such peer")
    return Response(status_code=204)


@router.post("/api/peers/{ae_title}/echo", tags=["peers"])
def _echo_peer(request: Request, ae_title: Name, _user: User) -> EchoResult:
    ctx = deps.state(request).ctx
    peer = configuration.find_peer(ctx, ae_title)
    if peer is None:
        raise HTTPException(404, "no such peer")
    if not peer.dialable:
        raise HTTPException(409, f"peer {ae_title} may call in from {peer.host}, not one host: it cannot be called")
    return configuration.echo_peer(ctx.settings, peer)


@router.get("/api/destinations", tags=["destinations"])
def _destinations(request: Request, _user: User) -> Listing:
    ctx = deps.state(request).ctx
    with ctx.sessions() as session:
        stored = [d.model_dump() for d in config_store.list_destinations(session)]
    return Listing(configured=[d.model_dump() for d in config_store.runtime_destinations(ctx.settings, ctx.sessions)
                               if d.name not in {s["name"] for s in stored}], stored=stored)


@router.put("/api/destinations/{name}", tags=["destinations"])
def _put_destination(request: Request, name: Name, body: DestinationBody, user: Admin) -> dict[str, Any]:
    if name == config_store.PACS_DESTINATION:
        raise HTTPException(409, "the PACS destination comes from the configuration (pacs)")
    destination = Destination(name=name, **body.model_dump())
    configuration.save_destination(request, user, destination)
    return destination.model_dump()


@router.delete("/api/destinations/{name}", tags=["destinations"], status_code=204, response_class=Response)
def _delete_destination(request: Request, name: Name, user: Admin) -> Response:
    if not configuration.remove_destination(request, user, name):
        raise HTTPException(404, "no such stored destination")
    return Response(status_code=204)


@router.post("/api/destinations/{name}/echo", tags=["destinations"])
def _echo_destination(request: Request, name: Name, _user: User) -> EchoResult:
    ctx = deps.state(request).ctx
    destination = configuration.find_destination(ctx, name)
    if destination is None:
        raise HTTPException(404, "no such destination")
    return configuration.echo_peer(ctx.settings, destination.peer)


def _rule_view(rule: Rule) -> dict[str, Any]:
    """A rule as the API shows it: ``destinations`` only when it names some (every destination otherwise)."""
    return rule.model_dump(exclude=None if rule.destinations else {"destinations"})


@router.get("/api/rules", tags=["rules"])
def _rules(request: Request, _user: User) -> Listing:
    """The configured and the added rules, each with ``state``: "in force", or why it gives no job now."""
    ctx = deps.state(request).ctx
    with ctx.sessions() as session:
        stored = config_store.list_rules(session)
    states = ctx.rule_states([*ctx.settings.rules, *stored])
    return Listing(configured=[{**_rule_view(r), "state": states[r.name]} for r in ctx.settings.rules],
                   stored=[{**_rule_view(r), "state": states[r.name]} for r in stored])


@router.put("/api/rules/{name}", tags=["rules"])
def _put_rule(request: Request, name: Name, body: RuleBody, user: Admin) -> dict[str, Any]:
    """Add or replace rule ``name``. Its model must be installed, unless ``model_not_installed_ok`` says the
    rule waits for a model not installed yet (422 otherwise, naming the model and the installed ones)."""
    rule = Rule(name=name, **body.model_dump(exclude={"model_not_installed_ok"}))
    if not body.model_not_installed_ok:
        try:
            config_store.check_rule_model(rule, load_manifests(deps.state(request).ctx.settings.models_dir))
        except ValueError as exc:
            raise HTTPException(422, f"{exc}; set model_not_installed_ok to save it anyway") from None
    configuration.save_rule(request, user, rule)
    return _rule_view(rule)


@router.delete("/api/rules/{name}", tags=["rules"], status_code=204, response_class=Response)
def _delete_rule(request: Request, name: Name, user: Admin) -> Response:
    if not configuration.remove_rule(request, user, name):
        raise HTTPException(404, "no such rule")
    return Response(status_code=204)
