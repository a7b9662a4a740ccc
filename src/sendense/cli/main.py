"""Entry point: `sendense hub ...`, `sendense repo ...`, `sendense ports`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sendense.cli import hub, node
from sendense.cli.client import HubClient, read_token
from sendense.cli.output import console, one_line_errors, repo_table, table

app = typer.Typer(help="Sendense VM backup.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(hub.app, name="hub")
app.add_typer(node.app, name="node")
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
