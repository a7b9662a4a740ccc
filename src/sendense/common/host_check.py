"""Plain HTTP on a loopback address answers only requests whose Host header names
that address: a web page whose DNS name an attacker re-points at 127.0.0.1 (DNS
rebinding) sends its own name as Host and is refused with 421, before routing."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send


def allowed_hosts(listen_host: str, port: int) -> frozenset[str]:
    names = {listen_host, "localhost"}
    allowed = set()
    for name in names:
        shown = f"[{name}]" if ":" in name else name
        allowed.add(f"{shown}:{port}".lower())
        if port == 80:
            allowed.add(shown.lower())
    return frozenset(allowed)


class HostCheck:
    def __init__(self, app: ASGIApp, listen_host: str, port: int) -> None:
        self.app = app
        self.allowed = allowed_hosts(listen_host, port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [v for k, v in scope.get("headers") or [] if k == b"host"]
        host = hosts[0].decode("latin-1").lower() if len(hosts) == 1 else ""
        if host in self.allowed:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "misdirected_request",
                "message": "this plain-HTTP API answers only requests addressed to "
                + " or ".join(sorted(self.allowed)),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 421,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
