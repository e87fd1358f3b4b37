"""The console's defence against cross-site request forgery: a state-changing request must come from the
console's own origin and carry its form's token. Both are checked; either missing refuses it.

- **Origin.** The request's ``Origin`` header (or, when a browser sends none, its ``Referer``) must be
  exactly the console's public origin, scheme, host and port: ``admin_public_origin``, or else the origin
  the node serves itself (``http://admin_host:admin_port``). SameSite=Strict cookies do not stop a page on
  another port of the same host (the same site, another origin), and a cookie that such a page sets is
  sent to every port of the host: the origin is what tells them apart.
- **Token.** Every form has a hidden ``csrf_token`` field. For a logged-in session it is an HMAC keyed by
  the session token: the session cookie is HttpOnly, so a page that cannot read it cannot compute the
  token, and each login gets a new one. The login form has no session yet: its token is a random value
  also held in a cookie (double submit). Tokens are compared with :func:`hmac.compare_digest`.

(OWASP's Cross-Site Request Forgery Prevention Cheat Sheet: synchronizer token plus origin verification.)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

LOGIN_COOKIE = "dicomnode_login_csrf"  # the login form's token (double submit), only sent to /ui/login
FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOGIN_TOKEN = re.compile(r"[A-Za-z0-9_\-]{43}")  # secrets.token_urlsafe(32)
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


class Refused(Exception):
    """A state-changing console request not from the console's own page; answered 403, audited."""


def public_origin(request: Request) -> str:
    """The console's origin: ``admin_public_origin``, or the origin this node serves (a wildcard host or
    port 0 taken from the listening socket, never from the request's Host header)."""
    settings = request.app.state.admin.ctx.settings
    if settings.admin_public_origin:
        return str(settings.admin_public_origin)
    server = request.scope.get("server") or ("", 0)
    host = settings.admin_host if settings.admin_host not in _WILDCARD_HOSTS else str(server[0])
    port = settings.admin_port or int(server[1] or 0)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lower case, without a default port ("" when it has none)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def check_origin(request: Request) -> None:
    """Refuse ``request`` unless its Origin (else its Referer) is the console's public origin.

    Raises
    ------
    Refused
        Naming what came instead (an origin, never a path or query).
    """
    expected = origin_of(public_origin(request))
    origin = request.headers.get("origin")
    if origin is not None:
        if origin_of(origin) != expected:
            raise Refused(f"Origin {origin[:80]!r} is not the console's ({expected})")
        return
    referer = request.headers.get("referer")
    if referer is None:
        raise Refused("neither Origin nor Referer: the console's forms always send one")
    if origin_of(referer) != expected:
        raise Refused(f"Referer from {origin_of(referer)[:80] or 'elsewhere'!r} is not the console's ({expected})")


def session_form_token(session_token: str) -> str:
    """The form token of the session whose (secret, HttpOnly) cookie is ``session_token``."""
    return hmac.new(session_token.encode(), b"dicomnode console form", hashlib.sha256).hexdigest()


def login_form_token(cookie: str | None) -> str:
    """The login form's token: the cookie's, when it holds one, else a new random one."""
    return cookie if cookie and _LOGIN_TOKEN.fullmatch(cookie) else secrets.token_urlsafe(32)


def check_token(sent: str, expected: str) -> None:
    """Refuse unless the form's token ``sent`` is ``expected`` (compared in constant time)."""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Refused("the form's token is missing or wrong: reload the page and try again")


def secure_cookies(request: Request) -> bool:
    """Whether the console's cookies must be Secure: served over https, here or at the public origin."""
    return request.url.scheme == "https" or public_origin(request).startswith("https://")
