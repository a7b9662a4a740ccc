"""The hub calling a node's API (8081) through the node's reverse forward.

Every call is safe to repeat (reads, cancels, and starts: the node answers a
repeated start with the job it started), so a call that got no answer is repeated
with backoff until `retry_s` has passed: a tunnel that drops for a moment (the
node's ssh restarting) does not fail the task. Repeated: connection refused or
reset, timeouts, a tunnel that is down or whose reverse port another process
holds, and a 502/503/504 that is not the node's own answer. Never repeated: any
answer of the node itself (its 4xx, its errors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

from sendense.common.contract import (
    BackupStartRequest,
    DiscoverResponse,
    NodeJobStatus,
    RestoreCheckRequest,
    RestoreCheckResponse,
    RestoreJobStatus,
    RestoreStartRequest,
    SnapshotHuntResponse,
    VcenterLogin,
    VmInventory,
)
from sendense.common.errors import NotFound, SendenseError, Unavailable
from sendense.hub.nodes.registry import NodeService

log = logging.getLogger(__name__)
# Between attempts: backoff * 2^n seconds, at most this (the NBD writer's shape,
# with a lower cap since the whole wait is bounded by retry_s).
MAX_BACKOFF = 5.0
# What a proxy in front of the node answers when the node is not there.
_GATEWAY_STATUSES = (502, 503, 504)


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


class _NoAnswer(Exception):
    """An attempt the node did not answer: worth repeating until the deadline."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _node_error(response: httpx.Response) -> tuple[str, str] | None:
    """(message, code) when the body is the node's own error answer."""
    try:
        answer = response.json()
    except ValueError:
        return None
    if not isinstance(answer, dict) or "error" not in answer:
        return None
    return str(answer.get("message", response.text)), str(answer["error"])


class NodeClient:
    # Class defaults: a subclass over another transport (tests) may skip __init__.
    retry_s = 60.0
    backoff = 0.25
    _reverse_port: int | None = None
    _owns_listener: Callable[[int], bool] | None = None

    def __init__(
        self,
        nodes: NodeService,
        name: str,
        timeout: float = 120.0,
        owns_listener: Callable[[int], bool] | None = None,
        *,
        retry_s: float = 60.0,
        backoff: float = 0.25,
        owns_connection: Callable[[int, int], bool] | None = None,
    ) -> None:
        """`owns_listener(port)`: the reverse port is our sshd's, asked before each
        request; `owns_connection(port, peer_port)`: a new connection's other end
        is, asked before a byte goes on it (tunnel_sshd.py)."""
        info = nodes.get(name)
        if info.revoked:
            raise NotFound(f"node {name!r} is revoked")
        if info.reverse_port is None:
            raise NotFound(f"node {name!r} has no tunnel")
        self.name = name
        self.url = f"http://127.0.0.1:{info.reverse_port}"
        self.retry_s = retry_s
        self.backoff = backoff
        self._reverse_port = info.reverse_port
        self._owns_listener = owns_listener
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {nodes.api_token(name)}"},
            timeout=timeout,
            transport=CheckedTransport(owns_connection) if owns_connection else None,
        )

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, relay: bool = False
    ) -> Any:
        """One call, repeated with backoff while the node does not answer, up to
        `retry_s`; then Unavailable."""
        deadline = time.monotonic() + self.retry_s
        failures = 0
        while True:
            try:
                response = self._attempt(method, path, body)
                break
            except _NoAnswer as exc:
                failures += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(
                        f"node {self.name!r} does not answer through its tunnel "
                        f"({failures} attempts in {self.retry_s:.0f}s): {exc.reason}"
                    ) from None
                pause = min(self.backoff * 2 ** (failures - 1), MAX_BACKOFF, left)
                log.info(
                    "node call repeated node=%s call=%s%s in=%.2fs: %s",
                    self.name,
                    method,
                    path,
                    pause,
                    exc.reason,
                )
                time.sleep(pause)
        if response.status_code >= 400:
            known = _node_error(response)
            message, code = known if known else (response.text, "node_refused")
            if relay and 400 <= response.status_code < 500 and response.status_code != 401:
                raise NodeRefused(message, response.status_code, code)
            raise NodeCallFailed(f"node {self.name!r}: {message}")
        return response.json()

    def _attempt(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        # The token and vCenter passwords go to whatever listens on the reverse
        # port: make sure, before every request, that it is our sshd's session for
        # the node, not a local process that took the port.
        owns = self._owns_listener
        if owns and self._reverse_port and not owns(self._reverse_port):
            raise _NoAnswer("not connected: its tunnel is down")
        try:
            response = self._http.request(method, path, json=body)
        except (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError) as exc:
            raise _NoAnswer(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in _GATEWAY_STATUSES and _node_error(response) is None:
            raise _NoAnswer(f"HTTP {response.status_code} from the tunnel")
        return response

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
        if body.get("vm_uuid") is None:
            body.pop("vm_uuid", None)  # the request as nodes before it knew it
        self._call("POST", "/api/v1/backup/start", body)

    def hunt_snapshots(self, login: VcenterLogin) -> SnapshotHuntResponse:
        answer = self._call("POST", "/api/v1/snapshots/hunt", _login_body(login))
        return SnapshotHuntResponse.model_validate(answer)

    def job(self, job_id: str, log_after: int = 0) -> NodeJobStatus:
        """The job's status, with its log lines numbered after `log_after`."""
        path = f"/api/v1/jobs/{job_id}" + (f"?log_after={log_after}" if log_after else "")
        return NodeJobStatus.model_validate(self._call("GET", path))

    def cancel(self, job_id: str) -> None:
        self._call("POST", f"/api/v1/jobs/{job_id}/cancel")

    def check_restore(self, request: RestoreCheckRequest) -> RestoreCheckResponse:
        answer = self._call("POST", "/api/v1/restore/check", _with_login(request), relay=True)
        return RestoreCheckResponse.model_validate(answer)

    def start_restore(self, request: RestoreStartRequest) -> None:
        self._call("POST", "/api/v1/restore/start", _with_login(request), relay=True)

    def restore_job(self, job_id: str, log_after: int = 0) -> RestoreJobStatus:
        path = f"/api/v1/restore/jobs/{job_id}" + (f"?log_after={log_after}" if log_after else "")
        return RestoreJobStatus.model_validate(self._call("GET", path))

    def cancel_restore(self, job_id: str) -> None:
        self._call("POST", f"/api/v1/restore/jobs/{job_id}/cancel")

    def close(self) -> None:
        self._http.close()


class _CheckedBackend(httpcore.SyncBackend):
    """Each new connection to a node's reverse port is checked before the token
    or a password is sent on it: its other end must be held by our sshd."""

    def __init__(self, owns_connection: Callable[[int, int], bool]) -> None:
        self._owns = owns_connection

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = super().connect_tcp(host, port, timeout, local_address, socket_options)
        peer_port = stream.get_extra_info("socket").getsockname()[1]
        if not self._owns(port, peer_port):
            stream.close()
            raise httpcore.ConnectError(
                f"not connected: 127.0.0.1:{port} is not held by the tunnel's sshd"
            )
        return stream


class CheckedTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool whose connections are checked
    (`_CheckedBackend`). httpx takes no network backend of its own: its pool is
    replaced (httpx and httpcore pinned; tests/test_reverse_port_check.py fails
    if a request ever reaches a listener that is not ours)."""

    def __init__(self, owns_connection: Callable[[int, int], bool]) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(network_backend=_CheckedBackend(owns_connection))


class NodeConnector:
    """Opens clients to enrolled nodes through their tunnels: what every task that
    talks to a node is given, instead of the whole hub."""

    def __init__(
        self,
        registry: NodeService,
        owns_listener: Callable[[int], bool],
        retry_s: float = 60.0,
        owns_connection: Callable[[int, int], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.owns_listener = owns_listener
        self.owns_connection = owns_connection
        self.retry_s = retry_s

    def open(self, name: str, retry_s: float | None = None) -> NodeClient:
        """`retry_s`: how long a call may wait for a node that does not answer
        (default: the connector's; shorter for a caller waiting on the API)."""
        return NodeClient(
            self.registry,
            name,
            owns_listener=self.owns_listener,
            retry_s=self.retry_s if retry_s is None else retry_s,
            owns_connection=self.owns_connection,
        )
