"""Request bodies are capped before they are read: a request without credentials
(health, enrollment, anything answered 401 anyway) may send a few KiB, an
authenticated one more. A declared length over the cap is answered 413 at once,
without reading the rest; a chunked body is counted as it arrives and cut off at
the cap."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PUBLIC_BODY_BYTES = 8 << 10
BODY_BYTES = 64 << 20  # a seed-style finish lists every area it read


class _TooLarge(HTTPException):
    """Raised while the app reads the body: FastAPI passes an HTTPException on, so
    the app's error handlers answer 413 with their usual JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class BodyLimit:
    def __init__(
        self, app: ASGIApp, public_bytes: int = PUBLIC_BODY_BYTES, limit_bytes: int = BODY_BYTES
    ) -> None:
        self.app = app
        self.public_bytes = public_bytes
        self.limit_bytes = limit_bytes

    def _limit(self, scope: Scope) -> int:
        headers = dict(scope.get("headers") or [])
        return self.limit_bytes if b"authorization" in headers else self.public_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, limit)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps(
        {"error": "too_large", "message": f"request body over {limit} bytes"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
