"""A vCenter/ESXi session with TLS pinned to one certificate.

The server's certificate is fetched once and compared with the pinned SHA-256
thumbprint; the SSL context then trusts exactly that certificate (partial
chain), so the SOAP session and the datastore HTTPS reads verify the same
thing. `insecure` exists for the simulator and is never the default.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pyVim.connect import Disconnect, SmartStubAdapter
from pyVmomi import vim

from sendense.common.errors import InvalidInput, SendenseError, Unavailable
from sendense.common.logging import register_secret
from sendense.common.tls import (
    fetch_certificate,
    normalize_fingerprint,
    pem_fingerprint,
    trusting_exactly,
    unverified_context,
)

log = logging.getLogger(__name__)


class VcenterError(SendenseError):
    http_status = 502
    code = "vcenter_error"


class VcenterLoginRefused(SendenseError):
    """Not 401: that status means the node's own token was refused."""

    http_status = 422
    exit_code = 5
    code = "vcenter_login_refused"


def split_host(host: str) -> tuple[str, int]:
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return name.strip("[]"), int(port)
    return host.strip("[]"), 443


def normalize_thumbprint(value: str) -> str:
    return normalize_fingerprint(value, "vCenter thumbprint")


def pinned_context(host: str, port: int, thumbprint: str | None, insecure: bool) -> ssl.SSLContext:
    if thumbprint is None:
        if not insecure:
            raise InvalidInput(
                f"no certificate thumbprint for vCenter {host}: pin one "
                "(vcenter_thumbprint) or set vcenter_insecure in the node's config"
            )
        return unverified_context()
    expected = normalize_thumbprint(thumbprint)
    pem = fetch_certificate(host, port, "vCenter")
    actual = pem_fingerprint(pem)
    if actual != expected:
        raise VcenterError(
            f"vCenter {host}:{port} presented certificate {actual}, not the pinned {expected}"
        )
    return trusting_exactly(pem)


@dataclass
class Vcenter:
    """An open session; close() logs out."""

    si: Any
    host: str
    port: int
    ssl_context: ssl.SSLContext

    @cached_property
    def content(self) -> Any:
        """The service content: fixed for the session, fetched once (each
        RetrieveContent is a round trip)."""
        return self.si.RetrieveContent()

    @property
    def session_cookie(self) -> str:
        cookie: str = self.si._stub.cookie
        return cookie

    def close(self) -> None:
        try:
            Disconnect(self.si)
        except Exception as exc:
            log.warning("vCenter logout failed host=%s: %s", self.host, type(exc).__name__)


def connect(
    host: str, user: str, password: str, thumbprint: str | None, insecure: bool = False
) -> Vcenter:
    register_secret(password)
    name, port = split_host(host)
    ctx = pinned_context(name, port, thumbprint, insecure)
    try:
        stub = SmartStubAdapter(host=name, port=port, sslContext=ctx, httpConnectionTimeout=60)
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"vCenter {name}:{port} is not reachable: {exc}") from exc
    except Exception as exc:  # pyVim raises a bare Exception for "not a VIM server"
        raise Unavailable(f"vCenter {name}:{port}: {exc}") from exc
    si = vim.ServiceInstance("ServiceInstance", stub)
    try:
        manager = si.RetrieveContent().sessionManager
        if manager is None:
            raise VcenterError(f"{name}:{port} has no session manager: not a vCenter or ESXi")
        manager.Login(user, password, None)
    except BaseException as exc:
        # A failed login must not leave the stub's pooled TLS socket open.
        stub.DropConnections()
        if isinstance(exc, vim.fault.InvalidLogin):
            raise VcenterLoginRefused(f"vCenter {name}:{port} refused the login of {user}") from exc
        if isinstance(exc, OSError | http.client.HTTPException):
            raise Unavailable(f"vCenter {name}:{port} is not reachable: {exc}") from exc
        if isinstance(exc, vim.fault.VimFault):
            raise VcenterError(f"vCenter {name}:{port}: {getattr(exc, 'msg', exc)}") from exc
        raise
    return Vcenter(si, name, port, ctx)
