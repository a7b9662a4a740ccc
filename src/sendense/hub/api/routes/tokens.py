"""/api/v1/tokens: create (the secret is in the answer, once), list and revoke
API tokens; `current` is the caller's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from sendense.common.errors import InvalidInput
from sendense.hub.api.deps import HubDep, PrincipalDep, authorize
from sendense.hub.auth.roles import ROLE_PERMISSIONS, Role
from sendense.hub.auth.tokens import TokenInfo

router = APIRouter(prefix="/api/v1/tokens", tags=["security"], dependencies=[Depends(authorize)])
MAX_LIFETIME_S = 10 * 366 * 86400


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    role: Role
    expires_in_s: int | None = Field(
        default=None, ge=60, le=MAX_LIFETIME_S, description="lifetime; none: never expires"
    )
    user: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="the user it acts for: revoked with the user; never above the user's role",
    )


class TokenOut(BaseModel):
    id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    user_id: str | None
    active: bool


class TokenCreatedOut(TokenOut):
    token: str = Field(description="the secret: shown only in this answer")


def token_out(info: TokenInfo, now: datetime | None = None) -> TokenOut:
    return TokenOut(**vars(info), active=info.active(now or datetime.now(UTC)))


@router.post("", status_code=201)
def create_token(hub: HubDep, principal: PrincipalDep, body: TokenIn) -> TokenCreatedOut:
    lifetime = timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    user_id = None
    if body.user is not None:
        user = hub.users.get(body.user)
        if not ROLE_PERMISSIONS[body.role] <= ROLE_PERMISSIONS[user.role]:
            raise InvalidInput(
                f"a token of user {user.name!r} ({user.role.value}) cannot have role "
                f"{body.role.value}"
            )
        user_id = user.id
    info, secret = hub.tokens.issue(
        body.name, body.role, lifetime, created_by=principal.label, user_id=user_id
    )
    return TokenCreatedOut(**token_out(info).model_dump(), token=secret)


@router.get("")
def list_tokens(hub: HubDep) -> list[TokenOut]:
    return [token_out(t) for t in hub.tokens.list()]


@router.get("/current")
def current_token(hub: HubDep, principal: PrincipalDep) -> TokenOut:
    return token_out(hub.tokens.get(principal.token_id))


@router.delete("/{token_id}")
def revoke_token(hub: HubDep, principal: PrincipalDep, token_id: str) -> TokenOut:
    """Revoked at once; 409 if it is the last active admin token."""
    return token_out(hub.tokens.revoke(token_id, by=principal))
