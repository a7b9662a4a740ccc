"""`sendense user add|passwd|list|remove`: through the hub's API (admin), or
offline on the hub's machine with `--data-dir`, `--config` or `--offline`, which
open its database directly (as `sendense hub token` does): the way to make the
first admin. Passwords are read from a hidden prompt or `--password-stdin`,
never from the command line."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.hub import ConfigOpt, DataDirOpt, HubUrlOpt, TokenFileOpt
from sendense.cli.output import one_line_errors, table
from sendense.common.errors import InvalidInput

if TYPE_CHECKING:
    from pathlib import Path

    from sendense.hub.service import Hub

user_app = typer.Typer(
    help="Users who log in to the hub (admin; offline with --data-dir on the hub's machine).",
    no_args_is_help=True,
)
ROLES = ("admin", "operator", "viewer")

OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Open the hub's database directly, on the hub's machine (implied by "
        "--data-dir and --config)",
    ),
]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from stdin's first line")
]


def _when(value: object) -> str | None:
    return str(value)[:19].replace("T", " ") if value else None


@contextmanager
def _offline_hub(data_dir: Path | None, config: Path | None) -> Iterator[Hub]:
    from sendense.cli.serving import appliance_settings
    from sendense.hub.config import HubSettings
    from sendense.hub.service import Hub

    hub = Hub.open(appliance_settings(HubSettings, config, data_dir, None))
    try:
        yield hub
    finally:
        hub.db.dispose()


def _audit(hub: Hub, action: str, name: str) -> None:
    """An offline change has no token: the audit log names the machine's user."""
    hub.audit_log.append(
        None,
        "CLI",
        f"sendense user {action}",
        {"user": name},
        "local",
        200,
        actor=f"cli:{getpass.getuser()}",
    )


def _is_offline(offline: bool, data_dir: Path | None, config: Path | None) -> bool:
    return offline or data_dir is not None or config is not None


def _client(hub_url: str | None, token_file: Path | None) -> HubClient:
    return HubClient(hub_url, read_token(token_file))


def _password(from_stdin: bool, what: str = "Password") -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidInput("--password-stdin: stdin has no password")
        return password
    if not sys.stdin.isatty():
        raise InvalidInput("no terminal to ask the password on: use --password-stdin")
    typed: str = typer.prompt(what, hide_input=True, confirmation_prompt=True)
    return typed


def _row(u: dict[str, Any]) -> tuple[object, ...]:
    return (
        u["name"],
        u["role"],
        "yes" if u["totp"] else "no",
        _when(u["created_at"]),
        u["created_by"],
        _when(u["password_changed_at"]),
    )


@user_app.command("list")
@one_line_errors
def user_list(
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
    offline: OfflineOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Users with their role and whether they use TOTP."""
    if _is_offline(offline, data_dir, config):
        with _offline_hub(data_dir, config) as hub:
            rows = [asdict(u) for u in hub.users.list()]
    else:
        rows = _client(hub_url, token_file).get("/api/v1/users")
    table(
        "Users", ["name", "role", "TOTP", "created", "by", "password set"], [_row(u) for u in rows]
    )


@user_app.command("add")
@one_line_errors
def user_add(
    name: Annotated[str, typer.Argument(help="The login name")],
    role: Annotated[str, typer.Option(help="admin, operator or viewer")],
    totp: Annotated[
        bool, typer.Option("--totp", help="Enroll a TOTP second factor (prints its URI once)")
    ] = False,
    password_stdin: PasswordStdinOpt = False,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
    offline: OfflineOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add a user (with --totp, print their authenticator's URI once).

    The otpauth:// URI goes to stdout, once: the hub keeps only a sealed copy of
    its secret."""
    if role not in ROLES:
        raise InvalidInput(f"--role {role!r}: use admin, operator or viewer")
    password = _password(password_stdin)
    if _is_offline(offline, data_dir, config):
        from sendense.hub.auth.roles import Role

        with _offline_hub(data_dir, config) as hub:
            _, uri = hub.users.create(name, Role(role), password, totp=totp, created_by="cli")
            _audit(hub, "add", name)
    else:
        body = {"name": name, "role": role, "password": password, "totp": totp}
        uri = _client(hub_url, token_file).post("/api/v1/users", body)["totp_uri"]
    print(f"user {name!r} added with role {role}", file=sys.stderr)
    if uri:
        print("TOTP: give this URI to the user's authenticator app (shown once):", file=sys.stderr)
        print(uri)


@user_app.command("passwd")
@one_line_errors
def user_passwd(
    name: Annotated[str, typer.Argument(help="The user")],
    password_stdin: PasswordStdinOpt = False,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
    offline: OfflineOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Set a user's password; their sessions end at once."""
    password = _password(password_stdin, "New password")
    if _is_offline(offline, data_dir, config):
        with _offline_hub(data_dir, config) as hub:
            hub.users.set_password(name, password)
            _audit(hub, "passwd", name)
    else:
        _client(hub_url, token_file).post(
            f"/api/v1/users/{quote(name, safe='')}/password", {"password": password}
        )
    print(f"password of user {name!r} changed; their sessions ended", file=sys.stderr)


@user_app.command("remove")
@one_line_errors
def user_remove(
    name: Annotated[str, typer.Argument(help="The user")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
    offline: OfflineOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove a user and revoke their sessions and tokens (not the last admin)."""
    if _is_offline(offline, data_dir, config):
        with _offline_hub(data_dir, config) as hub:
            hub.users.remove(name)
            _audit(hub, "remove", name)
    else:
        _client(hub_url, token_file).request("DELETE", f"/api/v1/users/{quote(name, safe='')}")
    print(f"user {name!r} removed; their sessions and tokens are revoked", file=sys.stderr)
