"""The admin app: the API, the web console and DICOMweb (one router each) on one FastAPI app, served by
uvicorn in a background thread (:mod:`dicomnode.admin.server`).

The routers share only :mod:`dicomnode.admin.deps` (state, roles, audit) and :mod:`dicomnode.admin.login`;
none imports another. OpenAPI: ``/openapi.json`` (the console is left out of it); with ``admin_docs``,
``/docs`` (Swagger UI), its script and stylesheet served by the node itself (``fastapi-offline``), never
from a CDN: the node works offline and an admin's browsing is not shown to a third party (no ReDoc: it
fetches its logo from its maker's CDN). No redirect is built from the Host header (no slash redirects; the
console's redirects are relative).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError

from dicomnode.admin import api, auth, console, csrf, dicomweb
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
    common: dict[str, Any] = {"title": "dicomnode admin API", "version": "1", "redirect_slashes": False}
    app = (FastAPIOffline(docs_url="/docs", redoc_url=None, static_url="/docs-static",
                          swagger_ui_parameters={"validatorUrl": None}, **common)
           if settings.admin_docs else FastAPI(docs_url=None, redoc_url=None, **common))
    app.state.admin = AdminState(
        ctx=ctx, accounts=auth.Accounts(settings.admin_users), registry=registry, metrics=metrics,
        throttle=LoginThrottle(settings.admin_login_free_failures, settings.admin_login_max_delay_seconds,
                               settings.admin_login_burst_seconds))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ValidationError, _invalid)
    app.add_exception_handler(console.LoginRedirect, console.to_login)
    app.add_exception_handler(csrf.Refused, console.refused)
    app.include_router(api.router)
    app.include_router(console.router)
    app.include_router(dicomweb.router)
    return app


def start_admin(ctx: AdminContext) -> AdminServer:
    """Serve the admin app on ``admin_host:admin_port`` (uvicorn, in a background thread)."""
    return start_server(create_app(ctx), ctx.settings)
