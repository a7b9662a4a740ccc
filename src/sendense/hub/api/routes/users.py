"""/api/v1/users: list, add and remove users, set a password (admin). No answer
carries a password, its hash or a TOTP secret; a new user's otpauth:// URI is in
the answer of its creation only."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from sendense.hub.api.deps import HubDep, PrincipalDep, authorize
from sendense.hub.auth.passwords import MAX_LENGTH
from sendense.hub.auth.roles import Role
from sendense.hub.auth.users import UserInfo

router = APIRouter(prefix="/api/v1/users", tags=["security"], dependencies=[Depends(authorize)])


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    role: Role
    password: SecretStr = Field(max_length=MAX_LENGTH)
    totp: bool = Field(default=False, description="enroll a TOTP second factor")


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: SecretStr = Field(max_length=MAX_LENGTH)


class UserOut(BaseModel):
    id: str
    name: str
    role: Role
    totp: bool
    created_at: datetime
    created_by: str | None
    password_changed_at: datetime


class UserCreatedOut(UserOut):
    totp_uri: str | None = Field(
        description="otpauth:// URI for the authenticator app: shown only in this answer"
    )


def user_out(info: UserInfo) -> UserOut:
    return UserOut(**vars(info))


@router.get("")
def list_users(hub: HubDep) -> list[UserOut]:
    return [user_out(u) for u in hub.users.list()]


@router.post("", status_code=201)
def add_user(
    hub: HubDep, principal: PrincipalDep, request: Request, body: UserIn
) -> UserCreatedOut:
    request.state.audit_target = {"user": body.name}
    info, uri = hub.users.create(
        body.name,
        body.role,
        body.password.get_secret_value(),
        totp=body.totp,
        created_by=principal.label,
    )
    return UserCreatedOut(**vars(info), totp_uri=uri)


@router.post("/{name}/password")
def set_password(hub: HubDep, name: str, body: PasswordIn) -> UserOut:
    """A new password; the user's sessions end at once."""
    return user_out(hub.users.set_password(name, body.password.get_secret_value()))


@router.delete("/{name}")
def remove_user(hub: HubDep, name: str) -> UserOut:
    """Removed with every token of theirs; 409 for the last admin."""
    return user_out(hub.users.remove(name))
