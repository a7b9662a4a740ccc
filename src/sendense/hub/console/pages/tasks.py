"""`/tasks`: every task, filtered by kind, state and VM; `/tasks/{id}`: one task
with its disks' bars, its throughput, where the time went and its log, all
following the task's events live (console.js), and cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from sendense.common.contract import TERMINAL_STATES
from sendense.hub.api.deps import HubDep
from sendense.hub.console.session import BrowserDep
from sendense.hub.console.views import PageRoute, page
from sendense.hub.db.models import JobState, TaskKind
from sendense.hub.tasks.catalog import TaskFilter

router = APIRouter(include_in_schema=False, route_class=PageRoute)
PAGE = 50


@router.get("/tasks")
def tasks(
    request: Request,
    hub: HubDep,
    browser: BrowserDep,
    kind: TaskKind | None = None,
    state: JobState | None = None,
    vm: Annotated[str | None, Query(max_length=255)] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> HTMLResponse:
    found = hub.tasks.list(TaskFilter(kind, state, vm or None), offset, PAGE)
    return page(
        request,
        "tasks.html",
        browser,
        found=found,
        kinds=list(TaskKind),
        states=list(JobState),
        kind=kind.value if kind else "",
        state=state.value if state else "",
        vm=vm or "",
        page_size=PAGE,
    )


@router.get("/tasks/{task_id}")
def task(request: Request, hub: HubDep, browser: BrowserDep, task_id: str) -> HTMLResponse:
    info = hub.tasks.get(task_id)
    return page(
        request,
        "task.html",
        browser,
        task=info,
        ended=info.state in TERMINAL_STATES,
        lines=hub.task_logs.read(task_id, 0, 1000),
    )
