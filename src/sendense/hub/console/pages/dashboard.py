"""`/`: every VM at a glance, the last day's failures, what runs now, the
repositories' space (with its history) and the nodes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from sendense.hub.api.deps import HubDep
from sendense.hub.console.overview import overview
from sendense.hub.console.session import BrowserDep
from sendense.hub.console.views import PageRoute, page
from sendense.hub.repository.repositories import RepositoryInfo
from sendense.hub.service import Hub

router = APIRouter(include_in_schema=False, route_class=PageRoute)


def backup_bytes_of(hub: Hub, repositories: list[RepositoryInfo]) -> dict[str, int]:
    """What each repository's backups took at its last daily sample (summing every
    point's files live takes a while on a large site; the repositories page does)."""
    found = {}
    for repo in repositories:
        last = hub.usage_history.series(repo.id, 1)
        if last and last[-1].backup is not None:
            found[repo.id] = last[-1].backup
    return found


@router.get("/")
def dashboard(request: Request, hub: HubDep, browser: BrowserDep) -> HTMLResponse:
    repositories = hub.repos.list()
    return page(
        request,
        "dashboard.html",
        browser,
        view=overview(hub),
        repositories=repositories,
        backups=backup_bytes_of(hub, repositories),
        nodes=hub.node_status(),
    )
