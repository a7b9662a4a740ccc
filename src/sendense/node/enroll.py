"""`sendense node enroll`: make the node's key, hand it to the hub with a pairing
code and a signature by that key, and pin the hub's host key.

Each enrollment makes a new key (a node's key is unique on the hub, a revoked
node's key is never taken again): it replaces the old one only once the hub
accepted it, so enrolling again is how a node's key is rotated. The signature
covers the pairing code, the node's name and key and the hub certificate seen
(`sendense.common.sshkeys.enrollment_challenge`).

The enrollment goes over TLS to a hub whose certificate matches the SHA-256 the
operator read from `sendense hub pair`, checked before the request (pairing
code, node token) is sent; a wrong certificate leaves the code unused. The pin
is kept with the tunnel's settings. `insecure` skips the check (labs only)."""

from __future__ import annotations

import httpx

from sendense.common.contract import EnrollResponse
from sendense.common.errors import InvalidInput, SendenseError, Unauthorized, Unavailable
from sendense.common.sshkeys import enrollment_challenge, ensure_keypair, fingerprint, sign
from sendense.common.tls import (
    fetch_certificate,
    normalize_fingerprint,
    pem_fingerprint,
    pinned_context,
    trusting_exactly,
)
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
    hub_cert_sha256: str | None = None,
    insecure: bool = False,
) -> tuple[EnrollResponse, str]:
    """Returns the hub's answer and this node's key fingerprint."""
    host, api_port = split_hub(hub)
    if not insecure and (hub_fingerprint is None or hub_cert_sha256 is None):
        raise InvalidInput(
            "give --hub-fingerprint and --hub-cert-sha256 as `sendense hub pair` printed "
            "them (or --insecure, for labs only)"
        )
    pin = normalize_fingerprint(hub_cert_sha256, "--hub-cert-sha256") if hub_cert_sha256 else None
    if pin is not None:
        ctx = pinned_context(host, api_port, pin, "hub")
        seen = pin
    else:  # --insecure: whatever certificate the hub shows, the same one throughout
        pem = fetch_certificate(host, api_port, "hub")
        ctx, seen = trusting_exactly(pem), pem_fingerprint(pem)
    private = tunnel_dir(settings.data_dir) / "id_ed25519"
    new_key = private.with_name("id_ed25519.new")
    for path in (new_key, new_key.with_name(new_key.name + ".pub")):
        path.unlink(missing_ok=True)  # left by an enrollment that failed
    keys = ensure_keypair(new_key, f"sendense-node:{name}")
    signature = sign(new_key, enrollment_challenge(code, name, keys.public_key, seen))
    token = NodeTokens(settings.data_dir).create("hub")
    body = {
        "code": code,
        "node_name": name,
        "public_key": keys.public_key,
        "node_api_token": token,
        "signature": signature,
    }
    try:
        response = httpx.post(
            f"https://{_url_host(host)}:{api_port}/api/v1/nodes/enroll",
            json=body,
            timeout=30,
            verify=ctx,
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
    new_key.with_name(new_key.name + ".pub").replace(private.with_name("id_ed25519.pub"))
    new_key.replace(private)
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
            hub_cert_sha256=pin,
        ),
    )
    return answer, fingerprint(keys.public_key)


def split_hub(hub: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT`, `[V6]:PORT` or `https://...` -> (host, port)."""
    rest = hub.strip().rstrip("/")
    if rest.startswith("http://"):
        raise InvalidInput("the hub's API speaks TLS: give --hub HOST:PORT or https://HOST:PORT")
    rest = rest.removeprefix("https://")
    name, sep, port = rest.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        if ":" in name and not name.startswith("["):
            return rest, 8082  # a bare IPv6 address
        return name.strip("[]"), int(port)
    return rest.strip("[]"), 8082


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
