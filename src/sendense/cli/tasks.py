"""`sendense tasks list|show|log|cancel`: the hub's long operations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.durations import parse_duration
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import console, human_bytes, one_line_errors, table
from sendense.cli.task_stream import follow
from sendense.common.errors import SendenseError

tasks_app = typer.Typer(help="Tasks: backups, restores, verifications...", no_args_is_help=True)

PAGE = 500


def _line(entry: dict[str, Any]) -> str:
    return f"{entry['at'][:23]} {entry['level']:<7} {entry['source']:<4} {entry['message']}"


@tasks_app.command("list")
@one_line_errors
def tasks_list(
    kind: Annotated[str | None, typer.Option(help="backup, restore, access, verify, prune")] = None,
    state: Annotated[str | None, typer.Option(help="queued, running, complete, failed...")] = None,
    vm: Annotated[str | None, typer.Option(help="The VM's name")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last 90m, 12h, 30d, 8w")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """The latest tasks, newest first."""
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("kind", kind), ("state", state), ("vm", vm)):
        if value is not None:
            params[name] = value
    if since is not None:
        params["since"] = (datetime.now(UTC) - parse_duration(since, "--since")).isoformat()
    page = HubClient(hub_url, read_token(token_file)).request("GET", "/api/v1/tasks", params=params)
    table(
        f"Tasks ({len(page['items'])} of {page['total']})",
        ["id", "kind", "vm", "state", "started by", "created", "error"],
        [
            (
                t["id"],
                t["kind"],
                t["vm"],
                t["state"],
                t["started_by"],
                t["created_at"][:19],
                t["error"],
            )
            for t in page["items"]
        ],
    )


@tasks_app.command("show")
@one_line_errors
def tasks_show(task_id: str, hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """One task: its state, who started it, where a backup's time went."""
    task = HubClient(hub_url, read_token(token_file)).get(f"/api/v1/tasks/{task_id}")
    for name in ("id", "kind", "vm", "state", "started_by", "created_at", "finished_at"):
        console.print(f"{name.replace('_', ' ')}: {task[name] if task[name] else '-'}")
    if task["error"]:
        console.print(f"error ({task['error_code'] or 'failed'}): {task['error']}")
    split = task.get("time_split")
    if split:
        console.print(
            f"time: source {split.get('source_s', 0):.1f} s, target "
            f"{split.get('target_s', 0):.1f} s, bottleneck {split.get('bottleneck') or '-'}"
        )


@tasks_app.command("log")
@one_line_errors
def tasks_log(
    task_id: str,
    follow_it: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the task ends")
    ] = False,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """The task's log: the hub's lines and its node's."""
    client = HubClient(hub_url, read_token(token_file))
    if follow_it:
        for event, data in follow(client, task_id):
            if event == "log":
                console.print(_line(data), markup=False, highlight=False, soft_wrap=True)
            elif event == "progress":
                _progress_line(data)
            elif event == "state" and data["state"] not in ("queued", "preparing", "running"):
                console.print(f"task {task_id} {data['state']}", markup=False)
                if data["state"] != "complete":
                    raise SendenseError(f"task {task_id} {data['state']}: {data['error']}")
        return
    after = 0
    while True:
        page = client.request(
            "GET", f"/api/v1/tasks/{task_id}/log", params={"after": after, "limit": PAGE}
        )
        for entry in page["lines"]:
            console.print(_line(entry), markup=False, highlight=False, soft_wrap=True)
        if len(page["lines"]) < PAGE:
            return
        after = page["next"]


def _progress_line(data: dict[str, Any]) -> None:
    disks = data.get("disks") or []
    if not disks:
        return
    parts = [
        f"disk {d['disk_key']} {human_bytes(d.get('bytes_done'))}"
        f"/{human_bytes(d.get('bytes_total'))}"
        for d in disks
    ]
    console.print("progress: " + ", ".join(parts), markup=False, highlight=False)


@tasks_app.command("cancel")
@one_line_errors
def tasks_cancel(task_id: str, hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """Cancel a queued or running backup or restore (its node stops too)."""
    task = HubClient(hub_url, read_token(token_file)).request(
        "POST", f"/api/v1/tasks/{task_id}/cancel"
    )
    console.print(f"task {task['id']} {task['state']}")
