"""Per-disk progress bars for a hub job, until the job ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from sendense.cli.client import HubClient
from sendense.cli.output import console
from sendense.common.contract import TERMINAL_STATES
from sendense.common.errors import SendenseError


def watch_job(
    client: HubClient, job_id: str, progress_path: str, label: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Poll the job and `progress_path` (its per-disk progress); returns the ended job."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bars:
        tasks: dict[int, Any] = {}
        while True:
            job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}")
            try:
                progress = client.get(progress_path)
            except SendenseError:
                progress = {"disks": []}
            for disk in progress["disks"]:
                key = disk["disk_key"]
                if key not in tasks:
                    tasks[key] = bars.add_task(label(disk), total=disk["bytes_total"] or None)
                bars.update(
                    tasks[key], completed=disk["bytes_done"], total=disk["bytes_total"] or None
                )
            if job["state"] in TERMINAL_STATES:
                return job
            time.sleep(0.5)
