"""Following a hub task through the API until it ends."""

from __future__ import annotations

import time
from typing import Any

import httpx

from sendense.common.contract import TERMINAL_STATES


def wait_task(
    client: httpx.Client, task_id: str, timeout: float = 60, poll: float = 0.05
) -> dict[str, Any]:
    """The task's row once it has ended; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{task_id}").json()
        if job["state"] in TERMINAL_STATES:
            return job
        assert time.monotonic() < deadline, f"task {task_id} still {job['state']}"
        time.sleep(poll)
