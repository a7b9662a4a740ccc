"""The hub calling a node's API (8081) through the node's reverse forward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from sendense.common.contract import (
    BackupStartRequest,
    DiscoverResponse,
    NodeJobStatus,
    RestoreCheckRequest,
    RestoreCheckResponse,
    RestoreJobStatus,
    RestoreStartRequest,
    VcenterLogin,
    VmInventory,
)
from sendense.common.errors import NotFound, SendenseError, Unavailable
from sendense.hub.nodes.registry import NodeService


def _login_body(login: VcenterLogin) -> dict[str, Any]:
    return {
        "vcenter_host": login.vcenter_host,
        "vcenter_user": login.vcenter_user,
        "vcenter_password": login.vcenter_password.get_secret_value(),
        "vcenter_thumbprint": login.vcenter_thumbprint,
    }


class NodeCallFailed(SendenseError):
    http_status = 502
    code = "node_error"


class NodeRefused(SendenseError):
    """The node refused a request as the caller's mistake (4xx): the hub's caller
    gets the same status and message (a VM name in use is a 409 all the way)."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code
        self.exit_code = {404: 3, 409: 4, 422: 2}.get(status, 1)


def _with_login(request: VcenterLogin) -> dict[str, Any]:
    """The request as JSON, the password in clear (only ever sent to the node)."""
    return request.model_dump(mode="json") | _login_body(request)


class NodeClient:
    def __init__(
        self,
        nodes: NodeService,
        name: str,
        timeout: float = 120.0,
        owns_listener: Callable[[int], bool] | None = None,
    ) -> None:
        info = nodes.get(name)
        if info.revoked:
            raise NotFound(f"node {name!r} is revoked")
        if info.reverse_port is None:
            raise NotFound(f"node {name!r} has no tunnel")
        # The token and vCenter passwords go to whatever listens on the reverse port:
        # make sure that is our sshd's session for the node, not a local squatter.
        if owns_listener is not None and not owns_listener(info.reverse_port):
            raise Unavailable(f"node {name!r} is not connected: its tunnel is down")
        self.name = name
        self.url = f"http://127.0.0.1:{info.reverse_port}"
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {nodes.api_token(name)}"},
            timeout=timeout,
        )

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, relay: bool = False
    ) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"node {self.name!r} does not answer through its tunnel: {exc}"
            ) from exc
        if response.status_code >= 400:
            try:
                answer = response.json()
                message = answer.get("message", response.text)
                code = answer.get("error", "node_refused")
            except (ValueError, AttributeError):
                message, code = response.text, "node_refused"
            if relay and 400 <= response.status_code < 500 and response.status_code != 401:
                raise NodeRefused(str(message), response.status_code, str(code))
            raise NodeCallFailed(f"node {self.name!r}: {message}")
        return response.json()

    def discover(self, login: VcenterLogin) -> DiscoverResponse:
        body = _login_body(login)
        return DiscoverResponse.model_validate(self._call("POST", "/api/v1/vms/discover", body))

    def inventory(self, login: VcenterLogin, vm_name: str) -> VmInventory:
        body = _login_body(login) | {"vm_name": vm_name}
        return VmInventory.model_validate(self._call("POST", "/api/v1/vms/inventory", body))

    def start_backup(self, request: BackupStartRequest) -> None:
        body = _login_body(request) | request.model_dump(
            mode="json",
            exclude={"vcenter_password", "vcenter_host", "vcenter_user", "vcenter_thumbprint"},
        )
        self._call("POST", "/api/v1/backup/start", body)

    def job(self, job_id: str) -> NodeJobStatus:
        return NodeJobStatus.model_validate(self._call("GET", f"/api/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> None:
        self._call("POST", f"/api/v1/jobs/{job_id}/cancel")

    def check_restore(self, request: RestoreCheckRequest) -> RestoreCheckResponse:
        answer = self._call("POST", "/api/v1/restore/check", _with_login(request), relay=True)
        return RestoreCheckResponse.model_validate(answer)

    def start_restore(self, request: RestoreStartRequest) -> None:
        self._call("POST", "/api/v1/restore/start", _with_login(request), relay=True)

    def restore_job(self, job_id: str) -> RestoreJobStatus:
        return RestoreJobStatus.model_validate(self._call("GET", f"/api/v1/restore/jobs/{job_id}"))

    def cancel_restore(self, job_id: str) -> None:
        self._call("POST", f"/api/v1/restore/jobs/{job_id}/cancel")

    def close(self) -> None:
        self._http.close()


class NodeConnector:
    """Opens clients to enrolled nodes through their tunnels: what every task that
    talks to a node is given, instead of the whole hub."""

    def __init__(self, registry: NodeService, owns_listener: Callable[[int], bool]) -> None:
        self.registry = registry
        self.owns_listener = owns_listener

    def open(self, name: str) -> NodeClient:
        return NodeClient(self.registry, name, owns_listener=self.owns_listener)
