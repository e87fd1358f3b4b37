"""Admin users and their sessions: PBKDF2-SHA256 password hashes, random bearer tokens stored hashed."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dicomnode.db import utcnow
from dicomnode.jobs.models import AdminSession
from dicomnode.settings import AdminUser

ITERATIONS = 310_000  # OWASP's figure for PBKDF2-HMAC-SHA256


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (base64), for ``admin_users`` in the configuration."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        actual = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(actual, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


def _iterations(encoded: str) -> int:
    try:
        return int(encoded.split("$")[1])
    except (IndexError, ValueError):
        return ITERATIONS


class Accounts:
    """The configured users, checked at one PBKDF2 run per login whether or not the name exists.

    An unknown name is checked against a decoy hash made once, at start, with as many iterations as the
    costliest real hash, so that the answer's timing does not tell which names exist.
    """

    def __init__(self, users: Sequence[AdminUser]) -> None:
        self.users = tuple(users)
        iterations = max((_iterations(u.password_hash) for u in self.users), default=ITERATIONS)
        self._decoy = hash_password(secrets.token_urlsafe(16), iterations=iterations)

    def find(self, name: str) -> AdminUser | None:
        return next((u for u in self.users if hmac.compare_digest(u.name.encode(), name.encode())), None)

    def authenticate(self, name: str, password: str) -> AdminUser | None:
        """The user when ``password`` is theirs; None otherwise, after the same work either way."""
        user = self.find(name)
        ok = check_password(password, user.password_hash if user else self._decoy)
        return user if ok and user is not None else None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, user: str, minutes: float) -> str:
    token = secrets.token_urlsafe(32)
    session.add(AdminSession(token_hash=_token_hash(token), user=user, created_at=utcnow(),
                             expires_at=utcnow() + dt.timedelta(minutes=minutes)))
    return token


def session_user(session: Session, token: str) -> str | None:
    row = session.scalar(select(AdminSession).where(AdminSession.token_hash == _token_hash(token),
                                                    AdminSession.expires_at > utcnow()))
    return row.user if row else None


def close_session(session: Session, token: str) -> str | None:
    user = session_user(session, token)
    session.execute(delete(AdminSession).where(AdminSession.token_hash == _token_hash(token)))
    return user
