"""`/`: every VM at a glance, the last day's failures, what runs now, the
repositories' space (with its history) and the nodes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from sendense.hub.api.deps import HubDep
from sendense.hub.api.routes.repositories import list_repositories
from sendense.hub.console.overview import overview
from sendense.hub.console.session import BrowserDep
from sendense.hub.console.views import PageRoute, page

router = APIRouter(include_in_schema=False, route_class=PageRoute)


@router.get("/")
def dashboard(request: Request, hub: HubDep, browser: BrowserDep) -> HTMLResponse:
    return page(
        request,
        "dashboard.html",
        browser,
        view=overview(hub),
        repositories=list_repositories(hub),
        nodes=hub.node_status(),
    )
