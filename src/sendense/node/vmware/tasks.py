"""Waiting for a vSphere task with a deadline and a readable error."""

from __future__ import annotations

import time
from typing import Any

from pyVmomi import vim

from sendense.node.vmware.connection import VcenterError


def wait_task(task: Any, what: str, timeout: float = 600.0) -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        info = task.info
        state = info.state
        if state == vim.TaskInfo.State.success:
            return info.result
        if state == vim.TaskInfo.State.error:
            fault = info.error
            message = getattr(fault, "msg", None) or type(fault).__name__
            raise VcenterError(f"{what} failed: {message}")
        if time.monotonic() > deadline:
            raise VcenterError(f"{what} did not finish within {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
