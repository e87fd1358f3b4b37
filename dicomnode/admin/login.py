"""Logging in and out, for the API (bearer token) and the console (cookie) alike.

A login is throttled per address and per user name before any password check, runs at most one PBKDF2
check at a time, and opens a session (a token stored hashed, expiring). The first failure of a burst, each
login and each logout is audited with the user and address; every outcome is counted in the metrics.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from dicomnode.admin import auth
from dicomnode.admin.deps import AdminState, client_address, state
from dicomnode.admin.schemas import LoginRequest, Token
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.settings import AdminUser


def log_in(request: Request, body: LoginRequest) -> Token:
    """Check ``body``'s user and password and open a session for that user.

    Raises
    ------
    HTTPException
        429 (with Retry-After) while the address or user name is throttled, 401 for a wrong user name
        or password.
    """
    admin, address = state(request), client_address(request)
    keys = [f"address {address}", f"user {body.user}"]
    wait = admin.throttle.wait_seconds(keys)
    if wait > 0:  # refused before any PBKDF2 run: a flood costs the node nothing
        admin.metrics.logins.labels("throttled").inc()
        raise HTTPException(429, "too many failed logins: try again later",
                            headers={"Retry-After": str(int(wait) + 1)})
    started = False
    with admin.pbkdf2:  # one password check at a time, so that a login flood cannot take every core
        if admin.throttle.wait_seconds(keys) > 0:  # throttled while it waited for its turn
            admin.metrics.logins.labels("throttled").inc()
            raise HTTPException(429, "too many failed logins: try again later", headers={"Retry-After": "1"})
        user = admin.accounts.authenticate(body.user, body.password)
        if user is None:
            started = admin.throttle.failed(keys)
    if user is None:
        _failed(admin, body.user, address, started)
        raise HTTPException(401, "wrong user name or password")
    admin.throttle.succeeded([f"user {body.user}"])
    admin.metrics.logins.labels("success").inc()
    return _open(admin, user, address)


def _failed(admin: AdminState, name: str, address: str, started: bool) -> None:
    admin.metrics.logins.labels("failure").inc()
    if not started:  # the first failure of a burst: one audit row, not one per try
        return
    with session_scope(admin.ctx.sessions) as session:
        record(session, AuditEvent.USER_LOGIN_FAILED, Outcome.MINOR_FAILURE, actor=name[:128],
               address=address, reason="wrong user name or password", security_alert=True,
               burst=f"further failures from {address} or for this user within "
                     f"{admin.ctx.settings.admin_login_burst_seconds:g} s are throttled, not recorded")


def _open(admin: AdminState, user: AdminUser, address: str) -> Token:
    minutes = admin.ctx.settings.admin_session_minutes
    with session_scope(admin.ctx.sessions) as session:
        token = auth.open_session(session, user.name, minutes)
        record(session, AuditEvent.USER_LOGIN, actor=user.name, address=address, role=user.role)
    return Token(token=token, expires_in=int(minutes * 60), role=user.role)


def log_out(request: Request, token: str) -> str | None:
    """Close the session that ``token`` names, audited; the user it belonged to (None: no live session)."""
    with session_scope(state(request).ctx.sessions) as session:
        name = auth.close_session(session, token) if token else None
        if name is not None:
            record(session, AuditEvent.USER_LOGOUT, actor=name, address=client_address(request))
    return name
