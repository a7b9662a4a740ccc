"""`sendense verify VM|RESTORE_POINT`: recompute checksums from the chain, show the verdict."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from sendense.cli.client import HubClient, read_token
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import console, one_line_errors, table
from sendense.common.contract import TERMINAL_STATES
from sendense.common.errors import SendenseError


class VerificationFailed(SendenseError):
    exit_code = 10


@one_line_errors
def verify(
    target: Annotated[str, typer.Argument(help="A restore point id, or a VM (all its points)")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Verify restore points: qemu-img check, and each disk's checksum read back from
    its chain. Exit 0 when all are valid, 10 when any is invalid."""
    client = HubClient(hub_url, read_token(token_file))
    queued = client.post("/api/v1/verify", {"target": target})
    job = _follow(client, queued["job_id"])
    if job["state"] != "complete":
        raise SendenseError(f"verification job {job['id']} {job['state']}: {job['error']}")
    points = [client.get(f"/api/v1/restore-points/{p}") for p in queued["restore_points"]]
    table(
        "Verification",
        ["point", "created", "result", "problem"],
        [
            (
                p["id"][:12],
                p["created_at"][:19],
                "valid" if p["status"] == "complete" else p["status"],
                p["verify_error"],
            )
            for p in points
        ],
    )
    invalid = [p["id"] for p in points if p["status"] != "complete"]
    if invalid:
        raise VerificationFailed(f"{len(invalid)} of {len(points)} restore points are invalid")


def _follow(client: HubClient, job_id: str) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bars:
        task = bars.add_task("verifying", total=None)
        while True:
            job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}")
            try:
                done = client.get(f"/api/v1/jobs/{job_id}/verify-progress")
                bars.update(
                    task,
                    completed=done["bytes_done"],
                    total=done["bytes_total"] or None,
                    description=f"verifying layer {done['layers_done']}/{done['layers_total']}",
                )
            except SendenseError:
                pass
            if job["state"] in TERMINAL_STATES:
                return job
            time.sleep(0.3)
