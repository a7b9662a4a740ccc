"""A task's live events for `GET /api/v1/tasks/{id}/events`.

Every `POLL_S` the stream looks at the task's row, its log and its runner's
progress, and sends what changed: `log` (one event per new line), `progress`
(the runner's figures: per disk for a backup or restore, per point for a
verification) and `state` (the task as `GET /api/v1/tasks/{id}` shows it). It
ends with the task's final `state`, after one more look at its log for the lines
written as it ended. An event's id is the number of the last log line sent, so
`Last-Event-ID` resumes the log where the client left it; progress and state are
sent afresh on a reconnect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, is_dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from sendense.common.contract import TERMINAL_STATES
from sendense.hub.db.models import TaskKind
from sendense.hub.service import Hub
from sendense.hub.tasks.catalog import TaskInfo
from sendense.hub.tasks.task_log import LogCursor

POLL_S = 0.25
LINES_PER_LOOK = 500


def progress_of(hub: Hub, task: TaskInfo) -> dict[str, Any] | None:
    """The runner's live figures for the task (None when it has none)."""
    found: object
    if task.kind == TaskKind.BACKUP.value:
        found = hub.backups.progress(task.id)
    elif task.kind == TaskKind.RESTORE.value:
        found = hub.restores.progress(task.id)
    elif task.kind == TaskKind.VERIFY.value:
        found = hub.verifications.progress(task.id)
    else:
        return None
    if isinstance(found, BaseModel):
        return found.model_dump(mode="json")
    if is_dataclass(found) and not isinstance(found, type):
        return json.loads(json.dumps(asdict(found), default=str))  # type: ignore[no-any-return]
    return None


_TASK = TypeAdapter(TaskInfo)


def _task_json(task: TaskInfo) -> str:
    return _TASK.dump_json(task).decode()


async def task_events(
    hub: Hub, task_id: str, after: int, disconnected: Callable[[], Awaitable[bool]]
) -> AsyncIterator[ServerSentEvent]:
    line = after
    cursor = LogCursor(after)
    state: str | None = None
    progress: dict[str, Any] | None = None
    ending = False
    while not await disconnected():
        task = await run_in_threadpool(hub.tasks.get, task_id)
        lines, cursor = await run_in_threadpool(
            hub.task_logs.follow, task_id, cursor, LINES_PER_LOOK
        )
        for entry in lines:
            line = entry.n
            data = {
                "n": entry.n,
                "at": entry.at.isoformat(),
                "level": entry.level,
                "source": entry.source,
                "message": entry.message,
            }
            yield ServerSentEvent(json.dumps(data), event="log", id=str(line))
        if len(lines) == LINES_PER_LOOK:
            continue  # more to send before anything else
        now = await run_in_threadpool(progress_of, hub, task)
        if now is not None and now != progress:
            progress = now
            yield ServerSentEvent(json.dumps(now), event="progress", id=str(line))
        if task.state in TERMINAL_STATES:
            if ending:
                yield ServerSentEvent(_task_json(task), event="state", id=str(line))
                return
            ending = True  # one more look: the lines written as it ended
        elif task.state != state:
            state = task.state
            yield ServerSentEvent(_task_json(task), event="state", id=str(line))
        await asyncio.sleep(POLL_S)
