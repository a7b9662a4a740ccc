"""The console on the hub's app: its pages, its static files, and the
Content-Security-Policy every answer carries (nothing loads from another site,
no inline script or style runs)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sendense.hub.console.pages import admin, dashboard, policies, tasks, vms
from sendense.hub.console.session import LoginRequired, to_login
from sendense.hub.console.session import router as session_router
from sendense.hub.console.views import HERE

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """The policy on every answer of the hub, API included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI) -> None:
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(LoginRequired, to_login)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(session_router)
    for module in (dashboard, vms, tasks, policies, admin):
        app.include_router(module.router)
