"""A browser's session: the login's token in an HttpOnly cookie, and the CSRF token
every state-changing request from that browser must carry beside it.

The CSRF token is an HMAC of the session's secret: a page of the console knows it
(the server puts it in the page), another site cannot (the cookie is HttpOnly and
SameSite=Strict, and the token is not derivable without the secret)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sendense.common.errors import Forbidden

COOKIE = "sendense_session"
# Before a login: a random value in this cookie and in the login form (double submit).
LOGIN_COOKIE = "sendense_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(session_secret: str) -> str:
    return hmac.new(session_secret.encode(), b"sendense-csrf", hashlib.sha256).hexdigest()


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def check_csrf(method: str, expected: str, sent: str | None) -> None:
    """403 when a state-changing request lacks the token or sends another one."""
    if method.upper() in SAFE_METHODS:
        return
    if not sent:
        raise Forbidden(f"missing CSRF token: a browser's request must send {CSRF_HEADER}")
    if not hmac.compare_digest(sent, expected):
        raise Forbidden("CSRF token does not match this session")
