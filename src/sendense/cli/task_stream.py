"""A task's events as the hub streams them (`GET /api/v1/tasks/{id}/events`),
followed until the task ends: a dropped stream is opened again with
`Last-Event-ID`, so no log line is lost or shown twice."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from httpx_sse import EventSource, SSEError

from sendense.cli.client import HubClient
from sendense.common.contract import TERMINAL_STATES
from sendense.common.errors import SendenseError, Unavailable

RECONNECTS = 10  # in a row, without an event between them


def follow(client: HubClient, task_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) until the task's final `state`, which comes last."""
    last_id: str | None = None
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with client.stream(
                "GET", f"/api/v1/tasks/{task_id}/events", headers=headers
            ) as response:
                for sse in EventSource(response).iter_sse():
                    failures = 0
                    last_id = sse.id or last_id
                    data: dict[str, Any] = json.loads(sse.data)
                    yield sse.event, data
                    if sse.event == "state" and data["state"] in TERMINAL_STATES:
                        return
        except (Unavailable, SSEError) as exc:
            failures += 1
            if failures > RECONNECTS:
                raise SendenseError(f"lost the hub's events for task {task_id}: {exc}") from exc
        time.sleep(min(0.5 * 2**failures, 5.0))
