"""Entry point: `sendense hub ...`, `sendense repo ...`, `sendense ports`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from sendense.cli import (
    backups,
    copies,
    hub,
    node,
    notify,
    policies,
    restore,
    restore_files,
    restore_vm,
    tasks,
    tokens,
    users,
    verify,
)
from sendense.cli.client import HubClient, read_token
from sendense.cli.output import console, one_line_errors, repo_table, table
from sendense.common.errors import InvalidInput, SendenseError
from sendense.common.files import private_umask

app = typer.Typer(help="Sendense VM backup.", no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _private_files() -> None:
    """Whatever the shell's umask, what any command creates is the user's alone."""
    private_umask()


app.add_typer(hub.app, name="hub")
app.add_typer(tokens.token_app, name="token")
app.add_typer(users.user_app, name="user")
app.command("audit")(tokens.audit)
app.add_typer(node.app, name="node")
app.add_typer(backups.vcenter_app, name="vcenter")
app.add_typer(backups.backup_app, name="backup")
app.add_typer(backups.jobs_app, name="jobs")
app.add_typer(tasks.tasks_app, name="tasks")
app.add_typer(backups.backups_app, name="backups")
app.command("verify")(verify.verify)
app.add_typer(restore.app, name="restore")
app.add_typer(policies.policy_app, name="policy")
app.add_typer(policies.schedules_app, name="schedules")
app.add_typer(notify.notify_app, name="notify")
app.add_typer(copies.app, name="copy")
app.command("prune")(policies.prune)
backups.backups_app.command("protect")(policies.protect)
restore.app.command("vm")(restore_vm.vm)
restore.app.add_typer(restore_files.app, name="files")
repo_app = typer.Typer(help="Backup repositories of the hub.", no_args_is_help=True)
app.add_typer(repo_app, name="repo")


def _client(hub_url: str | None, token_file: Path | None) -> HubClient:
    return HubClient(hub_url, read_token(token_file))


@repo_app.command("add")
@one_line_errors
def repo_add(
    path: Annotated[str, typer.Argument(help="An existing, writable directory")],
    name: Annotated[str | None, typer.Option(help="Name (default: the directory's)")] = None,
    hub_url: hub.HubUrlOpt = None,
    token_file: hub.TokenFileOpt = None,
) -> None:
    """Register a directory as a backup repository."""
    created = _client(hub_url, token_file).post(
        "/api/v1/repositories", {"path": path, "name": name}
    )
    repo_table("Repository added", [created])


@repo_app.command("list")
@one_line_errors
def repo_list(hub_url: hub.HubUrlOpt = None, token_file: hub.TokenFileOpt = None) -> None:
    """Repositories with their capacity."""
    repos = _client(hub_url, token_file).get("/api/v1/repositories")
    repo_table("Repositories", repos)


class RepositoryNotClean(SendenseError):
    exit_code = 10


@repo_app.command("check")
@one_line_errors
def repo_check(
    name: Annotated[str, typer.Argument(help="The repository's name or id")],
    repair: Annotated[
        bool, typer.Option(help="Remove orphan files, mark broken layers invalid")
    ] = False,
    hub_url: hub.HubUrlOpt = None,
    token_file: hub.TokenFileOpt = None,
) -> None:
    """Files no restore point uses, layers whose file is gone, chains whose files
    name another parent. Exit 0 when nothing is left to repair, 10 otherwise."""
    report = _client(hub_url, token_file).post(
        f"/api/v1/repositories/{quote(name, safe='')}/check", {"repair": repair}
    )
    console.print(
        f"repository {report['repository']}: {report['files']} files, "
        f"{report['layers']} layers, {len(report['findings'])} findings"
    )
    if report["findings"]:
        table(
            "Findings",
            ["kind", "file", "restore point", "detail", "repaired"],
            [
                (f["kind"], f["path"], f["restore_point_id"], f["detail"], f["repaired"])
                for f in report["findings"]
            ],
        )
    if not report["clean"]:
        raise RepositoryNotClean("the repository needs repair: `sendense repo check --repair`")


@app.command()
@one_line_errors
def ports(hub_url: hub.HubUrlOpt = None, token_file: hub.TokenFileOpt = None) -> None:
    """The NBD port pool and its allocations."""
    pool = _client(hub_url, token_file).get("/api/v1/ports")
    console.print(
        f"NBD ports {pool['first']}-{pool['last']}: {pool['used']} used, "
        f"{pool['free']} free of {pool['total']}"
    )
    table(
        "Allocations",
        ["port", "owner", "job", "disk"],
        [(a["port"], a["owner"], a["job_id"], a["disk_key"]) for a in pool["allocations"]],
    )


nodes_app = typer.Typer(help="Nodes enrolled with the hub.", no_args_is_help=True)
app.add_typer(nodes_app, name="nodes")
vms_app = typer.Typer(help="VMs of a vCenter, seen through a node.", no_args_is_help=True)
app.add_typer(vms_app, name="vms")


@nodes_app.command("list")
@one_line_errors
def nodes_list(hub_url: hub.HubUrlOpt = None, token_file: hub.TokenFileOpt = None) -> None:
    """Nodes with their tunnel state."""
    rows = _client(hub_url, token_file).get("/api/v1/nodes")
    table(
        "Nodes",
        ["name", "connected", "last seen", "key", "revoked"],
        [
            (n["name"], n["connected"], n["last_seen"], n["key_fingerprint"], n["revoked"])
            for n in rows
        ],
    )


@nodes_app.command("revoke")
@one_line_errors
def nodes_revoke(
    name: str, hub_url: hub.HubUrlOpt = None, token_file: hub.TokenFileOpt = None
) -> None:
    """Refuse the node's tunnel from now on and end its connection."""
    node = _client(hub_url, token_file).post(f"/api/v1/nodes/{name}/revoke", {})
    console.print(f"node {node['name']} revoked")


@vms_app.command("list")
@one_line_errors
def vms_list(
    vcenter: Annotated[
        str | None, typer.Option(help="vCenter host[:port] (default: the only one registered)")
    ] = None,
    node: Annotated[
        str | None, typer.Option(help="The node next to the vCenter (with --user)")
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(help="vCenter user; without it, the registered vCenter's login is used"),
    ] = None,
    thumbprint: Annotated[str | None, typer.Option(help="vCenter certificate SHA-256")] = None,
    password_file: backups.PasswordFileOpt = None,
    hub_url: hub.HubUrlOpt = None,
    token_file: hub.TokenFileOpt = None,
) -> None:
    """List the vCenter's VMs: the hub asks the node through its tunnel, with the login
    `sendense vcenter add` registered, or with --node, --user and a password."""
    client = _client(hub_url, token_file)
    if user is None:
        params = {"host": vcenter} if vcenter else {}
        found = client.request("GET", "/api/v1/vcenters/vms", params=params)
        title = f"VMs of {vcenter or 'the registered vCenter'}"
    else:
        found = client.post(
            f"/api/v1/nodes/{_needed(node, '--node')}/vms",
            {
                "vcenter_host": _needed(vcenter, "--vcenter"),
                "vcenter_user": user,
                "vcenter_password": backups.vcenter_password(password_file),
                "vcenter_thumbprint": thumbprint,
            },
        )
        title = f"VMs of {vcenter} (via node {node})"
    table(
        title,
        ["name", "power", "CBT", "disks"],
        [
            (
                v["name"],
                v["power_state"],
                v["cbt_enabled"],
                ", ".join(f"{d['key']}:{d['capacity_bytes'] >> 30} GiB" for d in v["disks"]),
            )
            for v in found["vms"]
        ],
    )


def _needed(value: str | None, option: str) -> str:
    if not value:
        raise InvalidInput(f"{option} is needed with --user")
    return value
