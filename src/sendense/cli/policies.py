"""`sendense policy ...`, `sendense prune VM`, `sendense schedules list`,
`sendense backups protect POINT`."""

from __future__ import annotations

from typing import Annotated

import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import console, one_line_errors, table
from sendense.common.errors import InvalidInput

policy_app = typer.Typer(help="Retention policies and schedules.", no_args_is_help=True)
schedules_app = typer.Typer(help="Scheduled backups.", no_args_is_help=True)
Count = Annotated[int, typer.Option(min=0)]


@policy_app.command("add")
@one_line_errors
def policy_add(
    name: str,
    keep_last: Count = 0,
    keep_hourly: Count = 0,
    keep_daily: Count = 0,
    keep_weekly: Count = 0,
    keep_monthly: Count = 0,
    keep_yearly: Count = 0,
    max_chain: Annotated[int | None, typer.Option(min=1, help="then a full")] = None,
    schedule: Annotated[str | None, typer.Option(help="cron, e.g. '0 2 * * *'")] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Create a policy."""
    keep = {
        "last": keep_last,
        "hourly": keep_hourly,
        "daily": keep_daily,
        "weekly": keep_weekly,
        "monthly": keep_monthly,
        "yearly": keep_yearly,
    }
    body = {
        "name": name,
        "max_chain_length": max_chain,
        "schedule": schedule,
        **{f"keep_{k}": v for k, v in keep.items()},
    }
    created = HubClient(hub_url, read_token(token_file)).post("/api/v1/policies", body)
    console.print(f"policy {created['name']} created")


@policy_app.command("list")
@one_line_errors
def policy_list(hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """Policies and what they are assigned to."""
    rows = HubClient(hub_url, read_token(token_file)).get("/api/v1/policies")
    table(
        "Policies",
        ["name", "keep", "max chain", "schedule", "assigned to"],
        [
            (
                p["name"],
                " ".join(f"{k}={v}" for k, v in p["keep"].items() if v) or "all",
                p["max_chain_length"],
                p["schedule"],
                ", ".join(f"{k}:{v}" for k, v in p["assignments"]),
            )
            for p in rows
        ],
    )


@policy_app.command("delete")
@one_line_errors
def policy_delete(name: str, hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    HubClient(hub_url, read_token(token_file)).request("DELETE", f"/api/v1/policies/{name}")
    console.print(f"policy {name} deleted")


@policy_app.command("assign")
@one_line_errors
def policy_assign(
    name: str,
    vm: Annotated[str | None, typer.Option(help="a VM by name")] = None,
    pattern: Annotated[str | None, typer.Option(help="VM names, e.g. 'web-*'")] = None,
    folder: Annotated[str | None, typer.Option(help="vCenter folder, e.g. DC0/vm/prod")] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Assign a policy to a VM, a name pattern or a vCenter folder."""
    given = [(k, v) for k, v in (("vm", vm), ("pattern", pattern), ("folder", folder)) if v]
    if len(given) != 1:
        raise InvalidInput("name exactly one of --vm, --pattern, --folder")
    kind, value = given[0]
    HubClient(hub_url, read_token(token_file)).post(
        f"/api/v1/policies/{name}/assignments", {"kind": kind, "value": value}
    )
    console.print(f"policy {name} assigned to {kind} {value}")


@one_line_errors
def prune(
    vm: str,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show, remove nothing")] = False,
    policy: Annotated[str | None, typer.Option(help="instead of the VM's own")] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Apply the VM's retention policy: which restore points stay, and the rule that
    keeps each; without --dry-run the others are removed (their data merged into
    what stays)."""
    client = HubClient(hub_url, read_token(token_file), timeout=3600)
    done = client.post("/api/v1/prune", {"vm": vm, "dry_run": dry_run, "policy": policy})
    title = f"Prune of {done['vm']} by policy {done['policy']}" + (" (dry run)" if dry_run else "")
    table(
        title,
        ["point", "time", "decision", "reason"],
        [
            (
                d["restore_point_id"][:12],
                d["at"][:19],
                "keep" if d["keep"] else "remove",
                d["reason"],
            )
            for d in done["decisions"]
        ],
    )
    if not dry_run:
        console.print(f"{len(done['removed'])} restore points removed")


@schedules_app.command("list")
@one_line_errors
def schedules_list(hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """Each scheduled policy with its last and next run."""
    rows = HubClient(hub_url, read_token(token_file)).get("/api/v1/schedules")
    table(
        "Schedules",
        ["policy", "cron", "last run", "next run", "VMs"],
        [
            (
                s["policy"],
                s["schedule"],
                (s["last_run_at"] or "never")[:19],
                s["next_run_at"][:19],
                ", ".join(s["vms"]),
            )
            for s in rows
        ],
    )


@one_line_errors
def protect(
    point: str,
    off: Annotated[bool, typer.Option("--off", help="allow pruning it again")] = False,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Protect a restore point: prune never removes it."""
    HubClient(hub_url, read_token(token_file)).post(
        f"/api/v1/restore-points/{point}/protect", {"protected": not off}
    )
    console.print(f"restore point {point} {'unprotected' if off else 'protected'}")
