"""Admin users and their sessions: PBKDF2-SHA256 password hashes, random bearer tokens stored hashed."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dicomnode.jobs.models import AdminSession, utcnow
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


def authenticate(users: tuple[AdminUser, ...] | list[AdminUser], name: str, password: str) -> bool:
    """Constant work whether or not the user exists, so that timing does not tell."""
    user = next((u for u in users if hmac.compare_digest(u.name.encode(), name.encode())), None)
    encoded = user.password_hash if user else hash_password("not a user", iterations=ITERATIONS)
    return check_password(password, encoded) and user is not None


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
