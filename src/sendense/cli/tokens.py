"""`sendense token list|create|revoke` and `sendense audit`, through the hub's API
(`sendense hub token` makes one offline, on the hub's machine)."""

from __future__ import annotations

import sys
from typing import Annotated, Any
from urllib.parse import quote

import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.durations import parse_duration
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import one_line_errors, table

token_app = typer.Typer(help="API tokens of the hub (admin).", no_args_is_help=True)
ROLES = ("admin", "operator", "viewer")


def _when(value: str | None) -> str | None:
    return value[:19].replace("T", " ") if value else None


def _state(t: dict[str, Any]) -> str:
    if t["revoked_at"]:
        return "revoked"
    return "active" if t["active"] else "expired"


@token_app.command("list")
@one_line_errors
def token_list(hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """Tokens with their role, expiry and last use (never their secret)."""
    rows = HubClient(hub_url, read_token(token_file)).get("/api/v1/tokens")
    table(
        "API tokens",
        ["id", "name", "role", "state", "created", "expires", "last used", "by"],
        [
            (
                t["id"],
                t["name"],
                t["role"],
                _state(t),
                _when(t["created_at"]),
                _when(t["expires_at"]),
                _when(t["last_used_at"]),
                t["created_by"],
            )
            for t in rows
        ],
    )


@token_app.command("create")
@one_line_errors
def token_create(
    name: Annotated[str, typer.Option(help="A name to tell tokens apart")],
    role: Annotated[str, typer.Option(help="admin, operator or viewer")],
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime: 90m, 12h, 30d, 8w (default: none)")
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(help="The user it acts for (revoked with the user; at most its role)"),
    ] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Create a token and print it once on stdout (details on stderr)."""
    body: dict[str, Any] = {"name": name, "role": role}
    if user is not None:
        body["user"] = user
    if expires_in is not None:
        body["expires_in_s"] = int(parse_duration(expires_in).total_seconds())
    created = HubClient(hub_url, read_token(token_file)).post("/api/v1/tokens", body)
    expiry = f"expires {_when(created['expires_at'])} UTC" if created["expires_at"] else "no expiry"
    print(
        f"token {created['id']} {created['name']!r} role {created['role']}, {expiry} "
        "(shown once, keep it):",
        file=sys.stderr,
    )
    print(created["token"])


@token_app.command("revoke")
@one_line_errors
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (`sendense token list`)")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Revoke a token at once (not the last active admin token)."""
    client = HubClient(hub_url, read_token(token_file))
    revoked = client.request("DELETE", f"/api/v1/tokens/{quote(token_id, safe='')}")
    print(f"token {revoked['id']} {revoked['name']!r} revoked")


@one_line_errors
def audit(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Entries, newest first")] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """The hub's audit log: state-changing calls, who made them and how they ended."""
    rows = HubClient(hub_url, read_token(token_file)).request(
        "GET", "/api/v1/audit", params={"limit": limit, "offset": offset}
    )
    table(
        "Audit log",
        ["at", "who", "role", "call", "target", "from", "status"],
        [
            (
                _when(e["at"]),
                e["actor"] or "unknown",
                e["role"],
                f"{e['method']} {e['action']}",
                ", ".join(f"{k}={v}" for k, v in e["target"].items()) or None,
                e["client"],
                f"{e['status']} {e['outcome']}",
            )
            for e in rows
        ],
    )
