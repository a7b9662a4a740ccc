"""`sendense vcenter add`, `sendense backup run`, `sendense jobs`, `sendense backups`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import console, human_bytes, one_line_errors, table
from sendense.cli.watch import watch_job
from sendense.common.errors import InvalidInput, SendenseError

vcenter_app = typer.Typer(help="vCenters the hub backs up from.", no_args_is_help=True)
backup_app = typer.Typer(help="Run backups.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs of the hub.", no_args_is_help=True)
backups_app = typer.Typer(help="Restore points.", no_args_is_help=True)


PasswordFileOpt = Annotated[
    Path | None,
    typer.Option(help="File with the vCenter password (else SENDENSE_VCENTER_PASSWORD)"),
]


def _client(hub_url: str | None, token_file: Path | None) -> HubClient:
    return HubClient(hub_url, read_token(token_file))


@vcenter_app.command("add")
@one_line_errors
def vcenter_add(
    host: str,
    user: Annotated[str, typer.Option(help="vCenter user")],
    node: Annotated[str, typer.Option(help="The node next to this vCenter")],
    thumbprint: Annotated[str | None, typer.Option(help="vCenter certificate SHA-256")] = None,
    password_file: PasswordFileOpt = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Register a vCenter (its password is sealed on the hub, never shown again)."""
    body = {
        "host": host,
        "user": user,
        "password": vcenter_password(password_file),
        "node": node,
        "thumbprint": thumbprint,
    }
    added = _client(hub_url, token_file).post("/api/v1/vcenters", body)
    console.print(f"vCenter {added['host']} added, reached through node {added['node']}")


@vcenter_app.command("passwd")
@one_line_errors
def vcenter_passwd(
    host: str,
    user: Annotated[str | None, typer.Option(help="A new vCenter user too")] = None,
    password_file: PasswordFileOpt = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Change a registered vCenter's password (and user), e.g. when it expires."""
    body = {"user": user, "password": vcenter_password(password_file)}
    changed = _client(hub_url, token_file).post(f"/api/v1/vcenters/{quote(host)}/login", body)
    console.print(f"vCenter {changed['host']}: new login for {changed['username']} stored")


def vcenter_password(password_file: Path | None) -> str:
    password = (
        password_file.read_text().strip()
        if password_file
        else os.environ.get("SENDENSE_VCENTER_PASSWORD", "")
    )
    if not password:
        raise InvalidInput("no vCenter password: --password-file or SENDENSE_VCENTER_PASSWORD")
    return password


@backup_app.command("run")
@one_line_errors
def backup_run(
    vm: str,
    full: Annotated[bool, typer.Option("--full", help="A full backup, not an incremental")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Show progress until it ends")] = False,
    vcenter: Annotated[str | None, typer.Option(help="Which vCenter, if several")] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Back up a VM: a full, or an incremental wherever its chain allows."""
    client = _client(hub_url, token_file)
    queued = client.post(
        "/api/v1/backups", {"vm": vm, "type": "full" if full else "auto", "vcenter": vcenter}
    )
    job_id = queued["job_id"]
    console.print(f"job {job_id} queued")
    if watch:
        job = watch_job(client, job_id, lambda d: f"disk {d['disk_key']} ({d['backup_type']})")
        if job["state"] != "complete":
            raise SendenseError(f"job {job_id} {job['state']}: {job['error']}")
        console.print(f"job {job_id} complete")


@jobs_app.command("list")
@one_line_errors
def jobs_list(hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """The latest jobs."""
    rows = _client(hub_url, token_file).get("/api/v1/jobs")
    table(
        "Jobs",
        ["id", "vm", "kind", "state", "created", "error"],
        [
            (
                j["id"],
                (j["vm_id"] or "-")[:8],
                _kind(j),
                j["state"],
                j["created_at"][:19],
                j["error"],
            )
            for j in rows
        ],
    )


def _kind(job: dict[str, Any]) -> str:
    """A task's kind, with a backup's type: "backup (full)", "verify"."""
    return f"{job['kind']} ({job['backup_type']})" if job["backup_type"] else str(job["kind"])


@jobs_app.command("show")
@one_line_errors
def jobs_show(job_id: str, hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """One job, with per-disk progress when the node reported any."""
    client = _client(hub_url, token_file)
    job = client.get(f"/api/v1/jobs/{job_id}")
    error = f", error: {job['error']}" if job["error"] else ""
    console.print(f"job {job['id']}: {job['state']} ({_kind(job)}){error}")
    try:
        progress = client.get(f"/api/v1/jobs/{job_id}/progress")
    except SendenseError:
        return
    table(
        "Disks",
        ["disk", "type", "done", "total", "rate/s", "written", "change id"],
        [
            (
                d["disk_key"],
                d["backup_type"],
                human_bytes(d["bytes_done"]),
                human_bytes(d["bytes_total"]),
                human_bytes(int(d["rate_bytes_per_s"])),
                human_bytes(d["bytes_written"]),
                d["change_id"],
            )
            for d in progress["disks"]
        ],
    )


@backups_app.command("list")
@one_line_errors
def backups_list(vm: str, hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """The VM's restore points and their disks."""
    points = _client(hub_url, token_file).request(
        "GET", "/api/v1/restore-points", params={"vm": vm}
    )
    rows = []
    read_whole = []
    for point in points:
        for disk in point["disks"]:
            if disk.get("full_reason"):
                read_whole.append(
                    f"{point['id'][:12]} disk {disk['disk_key']}: {disk['full_reason']}"
                )
            verified = (disk["verified_at"] or "never")[:19]
            status = point["status"] + (" (protected)" if point.get("protected") else "")
            checksum = (disk["checksum"] or "-").split(":")[-1][:12]
            rows.append(
                (
                    point["id"][:12],
                    point["created_at"][:19],
                    status,
                    disk["disk_key"],
                    disk["backup_type"],
                    disk.get("chain_position"),
                    human_bytes(disk["virtual_size"]),
                    human_bytes(disk["data_bytes"]),
                    human_bytes(disk["file_size"]),
                    checksum,
                    verified,
                )
            )
    table(
        f"Restore points of {vm}",
        [
            "point",
            "created",
            "status",
            "disk",
            "type",
            "chain",
            "virtual",
            "data",
            "file",
            "checksum",
            "verified",
        ],
        rows,
    )
    if read_whole:
        # Still a layer on its parent (its chain position says where): why it is a full.
        console.print("Read as a full on an existing chain:")
        for line in read_whole:
            console.print(f"  {line}", markup=False, soft_wrap=True)
