"""What every admin request shares: the app's state, the caller's address and user, the role checks,
and the audit of a view of patient names and IDs.

The roles, checked here and nowhere else: ``admin`` may change things and sees patient names and IDs;
``viewer`` may only read, with identifiers masked; ``sender`` may only use DICOMweb (/dicomweb).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import config_store
from dicomnode.admin import auth
from dicomnode.admin.throttle import LoginThrottle
from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.inference.registry import load_manifests, rule_states
from dicomnode.monitoring.node import AdminMetrics
from dicomnode.settings import AdminUser, Rule, Settings
from dicomnode.store.landing import Landing, SharesLanding


@dataclass(frozen=True)
class AdminContext(SharesLanding):
    """What the admin app needs: settings, database, the models this process runs (None: none), and the
    Prometheus registry that ``/metrics`` serves (other parts may register into it)."""

    settings: Settings
    sessions: sessionmaker[Session]
    models: tuple[str, ...] | None = None
    registry: CollectorRegistry | None = None
    default_rules: tuple[Rule, ...] = ()
    bursts: BurstAuditor | None = None  # refusals audited per burst (the node shares one; else made here)
    unavailable: Mapping[str, str] = field(default_factory=dict)  # model id -> why it cannot run (the registry's)
    landing: Landing | None = None  # the node shares one between C-STORE and STOW-RS; else made here

    def rules(self) -> list[Rule]:
        """The routing rules in force now (configured, stored, then the models' defaults)."""
        return config_store.runtime_rules(self.settings, self.sessions, self.default_rules)

    def rule_states(self, rules: Sequence[Rule]) -> dict[str, str]:
        """Rule name -> "in force", or why it gives no job now (:func:`~dicomnode.inference.registry.rule_states`)."""
        return rule_states(rules, load_manifests(self.settings.models_dir), self.unavailable, self.settings.demo_models)


@dataclass
class AdminState:
    """The admin app's state (``app.state.admin``): the context, the accounts, the login throttle, the
    metrics, and the one-at-a-time guard on password checks."""

    ctx: AdminContext
    accounts: auth.Accounts
    throttle: LoginThrottle
    registry: CollectorRegistry
    metrics: AdminMetrics
    pbkdf2: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))


def state(request: Request) -> AdminState:
    """The state of the admin app that serves ``request``."""
    admin: AdminState = request.app.state.admin
    return admin


def client_address(request: Request) -> str:
    """The caller's address, as the audit trail records it ("" when unknown)."""
    return request.client.host if request.client else ""


def bearer_token(authorization: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ("" for any other header)."""
    return authorization[7:].strip() if authorization.startswith("Bearer ") else ""


def session_owner(request: Request, token: str) -> AdminUser | None:
    """The configured user whose live session ``token`` is (None: no such live session)."""
    admin = state(request)
    with admin.ctx.sessions() as session:
        name = auth.session_user(session, token) if token else None
    return admin.accounts.find(name) if name is not None else None


def token_user(request: Request, authorization: str) -> AdminUser:
    """The user whose live bearer token ``authorization`` carries (401 without one), any role."""
    user = session_owner(request, bearer_token(authorization))
    if user is None:
        raise HTTPException(401, "log in first (POST /api/login)", headers={"WWW-Authenticate": "Bearer"})
    return user


def permitted(user: AdminUser, *, change: bool = False) -> AdminUser:
    """``user``, when the role may read (``change``: may change) through the API or the console.

    Raises
    ------
    HTTPException
        403 for the sender role (DICOMweb only), and for the viewer role when ``change``.
    """
    if user.role == "sender":
        raise HTTPException(403, "the sender role may use only /dicomweb")
    if change and user.role != "admin":
        raise HTTPException(403, "the viewer role may not change anything")
    return user


def current_user(request: Request, authorization: Annotated[str, Header()] = "") -> AdminUser:
    """The logged-in admin or viewer (401 without a live token, 403 for the sender role, which may use
    only /dicomweb); the role comes from the configuration."""
    return permitted(token_user(request, authorization))


def admin_user(user: Annotated[AdminUser, Depends(current_user)]) -> AdminUser:
    """The logged-in admin (403 for the viewer role)."""
    return permitted(user, change=True)


def dicomweb_user(request: Request, authorization: Annotated[str, Header()] = "") -> AdminUser:
    """An admin or sender with a live token (401 without one, 403 for the viewer role)."""
    user = token_user(request, authorization)
    if user.role not in ("admin", "sender"):
        raise HTTPException(403, "the viewer role may not use DICOMweb")
    return user


User = Annotated[AdminUser, Depends(current_user)]
Admin = Annotated[AdminUser, Depends(admin_user)]
WebUser = Annotated[AdminUser, Depends(dicomweb_user)]


def phi_viewed(request: Request, user: AdminUser, studies: list[dict[str, Any]], what: str) -> None:
    """Audit an admin's view of patient names and IDs (DICOM Instances Accessed), one row per study."""
    if user.role != "admin" or not studies:
        return
    with session_scope(state(request).ctx.sessions) as session:
        for study in studies:
            record(session, AuditEvent.INSTANCES_ACCESSED, actor=user.name, study_uid=study["study_uid"],
                   patient_id=study["patient_id"] or None, patient_name=study["patient_name"] or None,
                   address=client_address(request), reason=f"{what} viewed in the admin API")
