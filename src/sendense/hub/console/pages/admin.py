"""The hub's own settings: `/repositories`, `/nodes` (pair one, revoke),
`/vcenters`, `/settings` (notifications, users, API tokens) and `/audit`. Each
page shows what the role may see; what it may not change has no button, and the
API refuses it anyway."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from sendense.hub.api.deps import HubDep
from sendense.hub.api.routes.audit import audit
from sendense.hub.api.routes.notifications import list_rules, list_targets
from sendense.hub.api.routes.repositories import list_repositories
from sendense.hub.api.routes.tokens import list_tokens
from sendense.hub.api.routes.users import list_users
from sendense.hub.auth.roles import Permission
from sendense.hub.console.session import BrowserDep
from sendense.hub.console.views import PageRoute, page
from sendense.hub.notify.targets import EVENTS

router = APIRouter(include_in_schema=False, route_class=PageRoute)


@router.get("/repositories")
def repositories(request: Request, hub: HubDep, browser: BrowserDep) -> HTMLResponse:
    return page(request, "repositories.html", browser, repositories=list_repositories(hub))


@router.get("/nodes")
def nodes(request: Request, hub: HubDep, browser: BrowserDep) -> HTMLResponse:
    return page(request, "nodes.html", browser, nodes=hub.node_status())


@router.get("/vcenters")
def vcenters(request: Request, hub: HubDep, browser: BrowserDep) -> HTMLResponse:
    return page(
        request, "vcenters.html", browser, vcenters=hub.vcenters.list(), nodes=hub.node_status()
    )


@router.get("/settings")
def settings(request: Request, hub: HubDep, browser: BrowserDep) -> HTMLResponse:
    return page(
        request,
        "settings.html",
        browser,
        targets=list_targets(hub) if browser.may("manage_notifications") else None,
        rules=list_rules(hub) if browser.may("manage_notifications") else None,
        users=list_users(hub) if browser.may("manage_users") else None,
        tokens=list_tokens(hub) if browser.may("manage_tokens") else None,
        events=EVENTS,
    )


@router.get("/audit")
def audit_log(
    request: Request,
    hub: HubDep,
    browser: BrowserDep,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> HTMLResponse:
    browser.require(Permission.READ_AUDIT)
    return page(request, "audit.html", browser, entries=audit(hub, 100, offset), offset=offset)
