"""Signing in and out of the console: the login form (name, password, and the
authenticator's code for a user who has one), the session cookie, and
`signed_in`, the dependency of every page, which sends a browser without a
valid session to the login page."""

from __future__ import annotations

import hmac
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sendense.common.errors import SendenseError, Unauthorized
from sendense.hub.api.deps import HubDep
from sendense.hub.api.routes.auth import sign_in
from sendense.hub.auth.cookies import (
    COOKIE,
    LOGIN_COOKIE,
    check_csrf,
    csrf_token,
    new_login_nonce,
)
from sendense.hub.console.views import Browser, page

router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login form."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "log in")
        self.reason = reason


def signed_in(request: Request, hub: HubDep) -> Browser:
    secret = request.cookies.get(COOKIE)
    if not secret:
        raise LoginRequired()
    try:
        principal = hub.tokens.verify(secret)
    except Unauthorized as exc:
        raise LoginRequired(exc.message) from exc
    if principal.user_id is None:
        raise LoginRequired()
    request.state.principal = principal
    browser = Browser(principal.name, principal.role, csrf_token(secret), principal.token_id)
    request.state.browser = browser
    return browser


BrowserDep = Annotated[Browser, Depends(signed_in)]


def to_login(request: Request, exc: Exception) -> Response:
    reason = exc.reason if isinstance(exc, LoginRequired) else None
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = f"/login?next={quote(target)}" + (f"&ended={quote(reason)}" if reason else "")
    if request.headers.get("HX-Request"):  # htmx: a whole-page redirect, not a swap
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never `//other.example` or a scheme."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_form(request: Request, error: str | None, status: int, next_url: str) -> HTMLResponse:
    nonce = new_login_nonce()
    response = page(
        request,
        "login.html",
        None,
        status,
        error=error,
        nonce=nonce,
        next_url=next_url,
        ended=request.query_params.get("ended"),
    )
    response.set_cookie(
        LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=_tls(request), path="/login"
    )
    return response


def _tls(request: Request) -> bool:
    return request.url.scheme == "https"


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _login_form(request, None, 200, _safe_next(next))


@router.post("/login")
def login(
    request: Request,
    hub: HubDep,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    csrf: Annotated[str, Form(max_length=64)],
    totp: Annotated[str, Form(max_length=16)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    target = _safe_next(next)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not hmac.compare_digest(nonce, csrf):
        return _login_form(request, "The form expired: please log in again.", 403, target)
    try:
        _user, _token, secret = sign_in(hub, request, name, password, totp.strip() or None)
    except SendenseError as exc:
        return _login_form(request, exc.message, exc.http_status, target)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        secret,
        httponly=True,
        samesite="strict",
        secure=_tls(request),
        max_age=int(hub.settings.session_lifetime_s),
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(
    request: Request,
    hub: HubDep,
    browser: BrowserDep,
    csrf: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    check_csrf("POST", browser.csrf, csrf or request.headers.get("X-CSRF-Token"))
    hub.users.logout(browser.token_id)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
