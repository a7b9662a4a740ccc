"""/api/v1/vcenters: the vCenters the hub backs up from, each through one node, and
a registered vCenter's VMs asked with its own login."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from sendense.common.contract import DiscoverResponse
from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.api.routes.nodes import DISCOVER_RETRY_S
from sendense.hub.nodes.vcenters import VcenterInfo

router = APIRouter(prefix="/api/v1/vcenters", tags=["backups"], dependencies=[Depends(authorize)])


class VcenterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, max_length=255)
    user: str = Field(min_length=1, max_length=255)
    password: SecretStr
    node: str = Field(min_length=1, max_length=64)
    thumbprint: str | None = Field(default=None, max_length=200)


@router.post("", status_code=201)
def add_vcenter(hub: HubDep, body: VcenterIn) -> VcenterInfo:
    return hub.vcenters.add(
        body.host, body.user, body.password.get_secret_value(), body.node, body.thumbprint
    )


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, min_length=1, max_length=255)
    password: SecretStr


@router.post("/{host}/login")
def change_vcenter_login(hub: HubDep, host: str, body: LoginIn) -> VcenterInfo:
    """Rotate a registered vCenter's password (and user): sealed, never shown again."""
    return hub.vcenters.change_login(host, body.user, body.password.get_secret_value())


@router.get("")
def list_vcenters(hub: HubDep) -> list[VcenterInfo]:
    return hub.vcenters.list()


@router.get("/vms")
def vcenter_vms(
    hub: HubDep,
    host: Annotated[str | None, Query(max_length=255, description="host[:port] if several")] = None,
) -> DiscoverResponse:
    """The VMs of a registered vCenter (or the only one), asked of its node with the
    registered login: host and port, user, sealed password, thumbprint."""
    login, node = hub.vcenters.login(host)
    client = hub.connector.open(node, retry_s=DISCOVER_RETRY_S)
    try:
        return client.discover(login)
    finally:
        client.close()
