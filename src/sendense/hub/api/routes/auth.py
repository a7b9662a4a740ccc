"""/api/v1/auth: `login` (public: a name, a password and, when enrolled, a TOTP
code authenticate it) makes a session, a bearer token of the user's role that
expires; `logout` ends the caller's session. Failed logins are limited per user
name and per client address (429 with Retry-After)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from sendense.common.errors import Conflict, TooManyAttempts
from sendense.hub.api.deps import HubDep, PrincipalDep, authorize
from sendense.hub.auth.attempts import AttemptWindow
from sendense.hub.auth.passwords import MAX_LENGTH
from sendense.hub.auth.roles import Role
from sendense.hub.auth.tokens import Principal, TokenInfo
from sendense.hub.auth.users import LoginFailed, UserInfo
from sendense.hub.service import Hub

public = APIRouter(prefix="/api/v1/auth", tags=["security"])
router = APIRouter(prefix="/api/v1/auth", tags=["security"], dependencies=[Depends(authorize)])


@dataclass(frozen=True)
class LoginLimits:
    per_user: AttemptWindow
    per_address: AttemptWindow


def login_limits(hub: Hub) -> LoginLimits:
    """In the database: a restart does not give an attacker a fresh window."""
    s = hub.settings
    window = s.login_window_s
    return LoginLimits(
        AttemptWindow(hub.db, hub.box, "login-user", s.login_failures_per_user, window, "login"),
        AttemptWindow(
            hub.db, hub.box, "login-address", s.login_failures_per_address, window, "login"
        ),
    )


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    password: SecretStr = Field(min_length=1, max_length=MAX_LENGTH)
    totp: SecretStr | None = Field(
        default=None, max_length=16, description="the authenticator's code, if enrolled"
    )


class SessionOut(BaseModel):
    token: str = Field(description="send as 'Authorization: Bearer <token>'")
    token_id: str
    expires_at: datetime
    user: str
    role: Role


class LogoutOut(BaseModel):
    token_id: str
    revoked_at: datetime | None


@public.post("/login")
def login(hub: HubDep, request: Request, body: LoginIn) -> SessionOut:
    """The same 401 for an unknown name, a wrong password and a missing or wrong
    code: nothing tells which users exist."""
    code = body.totp.get_secret_value() if body.totp else None
    user, token, secret = sign_in(hub, request, body.name, body.password.get_secret_value(), code)
    assert token.expires_at is not None
    return SessionOut(
        token=secret, token_id=token.id, expires_at=token.expires_at, user=user.name, role=user.role
    )


def sign_in(
    hub: Hub, request: Request, name: str, password: str, code: str | None
) -> tuple[UserInfo, TokenInfo, str]:
    """A login's session, within the limits on failures per name and per address
    (the API's login and the console's share them)."""
    limits: LoginLimits = request.app.state.login_limits
    address = request.client.host if request.client else "unknown"
    by_address = limits.per_address.attempt(address)
    try:
        by_user = limits.per_user.attempt(name, shown="for this user")
    except TooManyAttempts:
        limits.per_address.forgive(by_address)  # refused unchecked: no failure
        raise
    try:
        user, token, secret = hub.users.login(name, password, code)
    except LoginFailed as exc:
        if exc.user_known:  # a mistyped password in the name field stays out of the log
            request.state.audit_target = {"user": name}
        raise
    limits.per_address.forgive(by_address)  # only failures count
    limits.per_user.forgive(by_user)
    request.state.principal = Principal(token.id, token.name, token.role, token.user_id)
    request.state.audit_target = {"user": user.name}
    return user, token, secret


class OwnChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: SecretStr = Field(min_length=1, max_length=MAX_LENGTH)
    new_password: SecretStr | None = Field(default=None, max_length=MAX_LENGTH)
    totp: bool | None = Field(
        default=None, description="true: a new second factor (its URI in the answer); false: none"
    )


class OwnChangeOut(BaseModel):
    user: str
    totp: bool
    totp_uri: str | None = Field(description="for the authenticator app: shown only here")
    sessions_ended: bool


@router.post("/me")
def change_own(
    hub: HubDep, request: Request, principal: PrincipalDep, body: OwnChangeIn
) -> OwnChangeOut:
    """A user changes their own password or second factor (their current password
    first, its failures counted like a login's). A new password ends all their
    sessions, this one too."""
    if principal.user_id is None:
        raise Conflict("an API token has no user: `sendense user password` is for admins")
    limits: LoginLimits = request.app.state.login_limits
    attempt = limits.per_user.attempt(principal.name, shown="for this user")
    new = body.new_password.get_secret_value() if body.new_password else None
    user, uri = hub.users.change_own(
        principal.user_id, body.current_password.get_secret_value(), password=new, totp=body.totp
    )
    limits.per_user.forgive(attempt)
    return OwnChangeOut(
        user=user.name, totp=user.totp, totp_uri=uri, sessions_ended=new is not None
    )


@router.post("/logout")
def logout(hub: HubDep, principal: PrincipalDep) -> LogoutOut:
    """End the caller's session at once (409 for a token that is not a session)."""
    ended = hub.users.logout(principal.token_id)
    return LogoutOut(token_id=ended.id, revoked_at=ended.revoked_at)
