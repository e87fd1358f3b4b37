"""The admin app: the API, the web console and DICOMweb (one router each) on one FastAPI app, served by
uvicorn in a background thread (:mod:`dicomnode.admin.server`).

The routers share only :mod:`dicomnode.admin.deps` (state, roles, audit) and :mod:`dicomnode.admin.login`;
none imports another. OpenAPI: ``/openapi.json`` and ``/docs`` (the console is left out of it).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from dicomnode.admin import api, auth, console, dicomweb
from dicomnode.admin.deps import AdminContext, AdminState
from dicomnode.admin.server import AdminServer, start_server
from dicomnode.admin.throttle import LoginThrottle
from dicomnode.monitoring.node import node_registry


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
    app.state.admin = AdminState(
        ctx=ctx, accounts=auth.Accounts(settings.admin_users), registry=registry, metrics=metrics,
        throttle=LoginThrottle(settings.admin_login_free_failures, settings.admin_login_max_delay_seconds,
                               settings.admin_login_burst_seconds))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ValidationError, _invalid)
    app.add_exception_handler(console.LoginRedirect, console.to_login)
    app.include_router(api.router)
    app.include_router(console.router)
    app.include_router(dicomweb.router)
    return app


def start_admin(ctx: AdminContext) -> AdminServer:
    """Serve the admin app on ``admin_host:admin_port`` (uvicorn, in a background thread)."""
    return start_server(create_app(ctx), ctx.settings)
