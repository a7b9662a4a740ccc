"""`sendense node enroll`: make the node's key, hand it to the hub with a pairing
code, and pin the hub's host key."""

from __future__ import annotations

import httpx

from sendense.common.contract import EnrollResponse
from sendense.common.errors import SendenseError, Unauthorized, Unavailable
from sendense.common.sshkeys import ensure_keypair, fingerprint
from sendense.node.auth import NodeTokens
from sendense.node.config import NodeSettings
from sendense.node.tunnel import TunnelConfig, save_config, tunnel_dir


def enroll(
    settings: NodeSettings,
    hub: str,
    code: str,
    name: str,
    local_address: str,
    hub_fingerprint: str | None = None,
) -> tuple[EnrollResponse, str]:
    """Returns the hub's answer and this node's key fingerprint."""
    host, _, port = hub.partition(":")
    api_port = int(port) if port else 8082
    keys = ensure_keypair(tunnel_dir(settings.data_dir) / "id_ed25519", f"sendense-node:{name}")
    token = NodeTokens(settings.data_dir).create("hub")
    body = {"code": code, "node_name": name, "public_key": keys.public_key, "node_api_token": token}
    try:
        response = httpx.post(
            f"http://{host}:{api_port}/api/v1/nodes/enroll", json=body, timeout=30
        )
    except httpx.HTTPError as exc:
        raise Unavailable(f"hub {host}:{api_port} does not answer: {exc}") from exc
    if response.status_code >= 400:
        message = response.json().get("message", response.text)
        error = Unauthorized if response.status_code == 401 else SendenseError
        raise error(f"the hub refused the enrollment: {message}")
    answer = EnrollResponse.model_validate(response.json())
    actual = fingerprint(answer.hub_host_key)
    if hub_fingerprint is not None and actual != hub_fingerprint.strip():
        # The enrollment answer came over the network: only the fingerprint the
        # operator read on the hub (`sendense hub pair`) proves whose key it is.
        raise SendenseError(
            f"the hub's host key is {actual}, not {hub_fingerprint.strip()}: refusing to pin it"
        )
    save_config(
        settings.data_dir,
        TunnelConfig(
            hub_host=host,
            tunnel_port=answer.tunnel_port,
            node_name=answer.node_name,
            reverse_port=answer.reverse_port,
            nbd_port_min=answer.nbd_port_min,
            nbd_port_max=answer.nbd_port_max,
            api_port=answer.api_port,
            hub_host_key=answer.hub_host_key,
            tunnel_user=answer.tunnel_user,
            local_address=local_address,
            node_api_port=settings.listen_port,
        ),
    )
    return answer, keys.fingerprint
