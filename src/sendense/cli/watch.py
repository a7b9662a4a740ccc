"""Per-disk progress bars for a hub task, from its event stream, until it ends."""

from __future__ import annotations

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
from sendense.cli.task_stream import follow


def watch_job(
    client: HubClient, job_id: str, label: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Follow the task's events (`progress` per disk, warnings from its log);
    returns the ended task as `GET /api/v1/tasks/{id}` shows it."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    ended: dict[str, Any] = {}
    with Progress(*columns, console=console, transient=False) as bars:
        rows: dict[int, Any] = {}
        for event, data in follow(client, job_id):
            if event == "progress":
                for disk in data.get("disks", []):
                    key = disk["disk_key"]
                    total = disk.get("bytes_total") or None
                    if key not in rows:
                        rows[key] = bars.add_task(label(disk), total=total)
                    bars.update(rows[key], completed=disk["bytes_done"], total=total)
            elif event == "log" and data["level"] in ("WARNING", "ERROR"):
                bars.console.print(f"{data['level'].lower()}: {data['message']}")
            elif event == "state":
                ended = data
    return ended
