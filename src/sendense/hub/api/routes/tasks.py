"""/api/v1/tasks: every long operation of the hub as a task: listed with filters,
one by id, its log, its live events (Server-Sent Events) and cancel.

`/api/v1/jobs` stays as it was: the same rows, the seed's shape."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, ConfigDict
from sse_starlette import EventSourceResponse

from sendense.hub.api.deps import HubDep, PrincipalDep, authorize, demand
from sendense.hub.api.task_events import task_events
from sendense.hub.auth.roles import Permission
from sendense.hub.db.models import JobState, TaskKind
from sendense.hub.tasks.catalog import TaskFilter, TaskInfo
from sendense.hub.tasks.task_log_handler import write_line

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], dependencies=[Depends(authorize)])

MAX_LINE = 1 << 62


class TaskPageOut(BaseModel):
    items: list[TaskInfo]
    total: int
    offset: int
    limit: int


class LogLineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    n: int
    at: datetime
    level: str
    source: str
    message: str


class TaskLogOut(BaseModel):
    lines: list[LogLineOut]
    next: int  # ask for `after=next` to get what comes later


@router.get("")
def list_tasks(
    hub: HubDep,
    kind: TaskKind | None = None,
    state: JobState | None = None,
    vm: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    since: datetime | None = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> TaskPageOut:
    """Newest first; `since` is a creation time (ISO 8601)."""
    page = hub.tasks.list(TaskFilter(kind, state, vm, since), offset, limit)
    return TaskPageOut(items=page.items, total=page.total, offset=offset, limit=limit)


@router.get("/{task_id}")
def get_task(hub: HubDep, task_id: str) -> TaskInfo:
    return hub.tasks.get(task_id)


@router.get("/{task_id}/log")
def task_log(
    hub: HubDep,
    task_id: str,
    after: Annotated[int, Query(ge=0, le=MAX_LINE)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> TaskLogOut:
    """The log's lines after the `after`-th (none, no error, past its end)."""
    hub.tasks.get(task_id)  # 404 for an unknown task
    lines = hub.task_logs.read(task_id, after, limit)
    return TaskLogOut(
        lines=[LogLineOut.model_validate(x) for x in lines],
        next=lines[-1].n if lines else after,
    )


@router.get("/{task_id}/events")
async def task_event_stream(
    request: Request,
    hub: HubDep,
    task_id: str,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int, Query(ge=0, le=MAX_LINE)] = 0,
) -> EventSourceResponse:
    """`state`, `progress` and `log` events as they happen; the stream ends after
    the task's final `state`. Each event's id is the number of the last log line
    sent: a reconnect with `Last-Event-ID` resumes after it."""
    hub.tasks.get(task_id)  # 404 before the stream starts
    start = after
    if last_event_id is not None and last_event_id.isdigit() and len(last_event_id) < 19:
        start = int(last_event_id)
    return EventSourceResponse(task_events(hub, task_id, start, request.is_disconnected))


@router.post("/{task_id}/cancel")
def cancel_task(hub: HubDep, principal: PrincipalDep, task_id: str) -> TaskInfo:
    """Cancel a queued or running backup or restore: it reads `cancelled` at once;
    the node stops and removes its snapshot, the hub its unfinished files."""
    if hub.tasks.get(task_id).kind == TaskKind.RESTORE.value:
        demand(principal, Permission.RESTORE)
    task = hub.tasks.cancel(task_id, principal.starter)
    write_line(hub.task_logs, task_id, "WARNING", f"cancelled by {principal.starter}")
    return task
