"""/api/v1/nodes: pairing codes, enrollment (authenticated by a pairing code, not a
token), list, revoke, and a node's view of its vCenter's VMs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from sendense.common.contract import (
    DiscoverResponse,
    EnrollRequest,
    EnrollResponse,
    VcenterLogin,
)
from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.auth.attempts import AttemptWindow
from sendense.hub.nodes.registry import NodeInfo, Pairing
from sendense.hub.service import Hub

public = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])
router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"], dependencies=[Depends(authorize)])
DISCOVER_RETRY_S = 10.0


# Pairing codes carry 60 bits; still, nobody gets to try them quickly.
ENROLL_ATTEMPTS = 10
ENROLL_WINDOW_S = 60.0


def enroll_limiter(hub: Hub) -> AttemptWindow:
    return AttemptWindow(
        hub.db, hub.box, "enrollment", ENROLL_ATTEMPTS, ENROLL_WINDOW_S, "enrollment"
    )


@public.post("/enroll", status_code=201)
def enroll(hub: HubDep, request: Request, body: EnrollRequest) -> EnrollResponse:
    limiter: AttemptWindow = request.app.state.enroll_limiter
    limiter.attempt(request.client.host if request.client else "unknown")
    info = hub.enroll_node(
        body.code,
        body.node_name,
        body.public_key,
        body.signature,
        body.node_api_token.get_secret_value(),
    )
    host_key = hub.tunnel_identity()
    s = hub.settings
    return EnrollResponse(
        node_id=info.id,
        node_name=info.name,
        key_fingerprint=info.key_fingerprint or "",
        hub_host_key=host_key.public_key,
        hub_host_key_fingerprint=host_key.fingerprint,
        tunnel_port=s.tunnel_port,
        tunnel_user=info.system_user or "",
        reverse_port=info.reverse_port or 0,
        nbd_port_min=s.nbd_port_min,
        nbd_port_max=s.nbd_port_max,
        api_port=s.listen_port,
    )


@router.post("/pairing-codes", status_code=201)
def pairing_code(hub: HubDep, request: Request) -> Pairing:
    """A single-use pairing code (shown in this answer only) and the `sendense node
    enroll` line to run on the node, as `sendense hub pair` prints them; the hub's
    address in it is the one this request was sent to."""
    return hub.pair(request.url.netloc)


@router.get("")
def list_nodes(hub: HubDep) -> list[NodeInfo]:
    return hub.node_status()


@router.post("/{name}/revoke")
def revoke(hub: HubDep, name: str) -> NodeInfo:
    return hub.revoke_node(name)


@router.post("/{name}/vms")
def discover(hub: HubDep, name: str, login: VcenterLogin) -> DiscoverResponse:
    """The vCenter's VMs, asked of the node through its tunnel with the login given; a
    vCenter registered at that host[:port] lends its certificate thumbprint when the
    login names none."""
    if login.vcenter_thumbprint is None:
        pinned = hub.vcenters.thumbprint(login.vcenter_host)
        if pinned is not None:
            login = login.model_copy(update={"vcenter_thumbprint": pinned})
    # Someone waits on this answer (the CLI for 30 s): a blip is waited out, a
    # node that stays away is reported.
    client = hub.connector.open(name, retry_s=DISCOVER_RETRY_S)
    try:
        return client.discover(login)
    finally:
        client.close()
