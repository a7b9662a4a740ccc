"""Templates and what every page is given: the signed-in browser (user, role, CSRF
token, what the role may do) and the filters that format sizes and times."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from sendense.common.errors import Forbidden, SendenseError
from sendense.hub.auth.roles import Permission, Role, allows

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


@dataclass(frozen=True)
class Browser:
    """The person at the browser: their session's user, role and CSRF token."""

    user: str
    role: Role
    csrf: str
    token_id: str

    def may(self, permission: str) -> bool:
        return allows(self.role, Permission(permission))

    def require(self, permission: Permission) -> None:
        """403 for a page the role may not see (its link is not shown either)."""
        if not allows(self.role, permission):
            raise Forbidden(f"role {self.role.value} may not {permission.value.replace('_', ' ')}")


class PageRoute(APIRoute):
    """A page's error (a 404, a refusal) as a page with the API's message, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SendenseError as exc:
                browser = getattr(request.state, "browser", None)
                return page(request, "error.html", browser, exc.http_status, message=exc.message)

        return handle


def size(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def age(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit} ago"
    return "just now"


def iso(when: datetime | None) -> str:
    return when.isoformat() if when else ""


templates.env.filters["size"] = size
templates.env.filters["age"] = age
templates.env.filters["iso"] = iso


def page(
    request: Request, name: str, browser: Browser | None, status: int = 200, **context: Any
) -> HTMLResponse:
    """A whole page (or, for htmx, the fragment the template renders)."""
    return templates.TemplateResponse(
        request, name, {"browser": browser, **context}, status_code=status
    )
