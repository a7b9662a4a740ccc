"""`sendense notify`: notification targets (SMTP, webhooks), rules, a test message.
No secret on the command line: the SMTP password comes from a file or
SENDENSE_SMTP_PASSWORD; a webhook's HMAC key is printed once, on its creation."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import console, one_line_errors, table
from sendense.common.errors import InvalidInput

notify_app = typer.Typer(help="Notifications: targets, rules, test.", no_args_is_help=True)
target_app = typer.Typer(help="Where notifications go: SMTP, webhooks.", no_args_is_help=True)
rule_app = typer.Typer(help="Which events go to which target.", no_args_is_help=True)
notify_app.add_typer(target_app, name="target")
notify_app.add_typer(rule_app, name="rule")
API = "/api/v1/notifications"


def _client(hub_url: str | None, token_file: Path | None) -> HubClient:
    return HubClient(hub_url, read_token(token_file))


@target_app.command("add-smtp")
@one_line_errors
def add_smtp(
    name: str,
    host: Annotated[str, typer.Option(help="SMTP server")],
    sender: Annotated[str, typer.Option("--from", help="The From address")],
    to: Annotated[list[str], typer.Option(help="A recipient (repeat for more)")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = 587,
    security: Annotated[str, typer.Option(help="starttls, tls or none (a local relay)")] = (
        "starttls"
    ),
    user: Annotated[str | None, typer.Option(help="SMTP login")] = None,
    ca_file: Annotated[
        str | None, typer.Option(help="CA file on the hub (else the system's CAs)")
    ] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="with --user; else SENDENSE_SMTP_PASSWORD")
    ] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Mail notifications through an SMTP server (the password is sealed on the hub)."""
    smtp: dict[str, Any] = {
        "host": host,
        "port": port,
        "security": security,
        "sender": sender,
        "recipients": to,
        "ca_file": ca_file,
    }
    if user:
        smtp |= {"username": user, "password": _smtp_password(password_file)}
    added = _client(hub_url, token_file).post(f"{API}/targets", {"name": name, "smtp": smtp})
    console.print(f"target {added['target']['name']} added: mail to {', '.join(to)}")


def _smtp_password(password_file: Path | None) -> str:
    try:
        password = (
            password_file.read_text().strip()
            if password_file
            else os.environ.get("SENDENSE_SMTP_PASSWORD", "")
        )
    except OSError as exc:
        raise InvalidInput(f"cannot read {password_file}: {exc.strerror}") from None
    if not password:
        raise InvalidInput("no SMTP password: --password-file or SENDENSE_SMTP_PASSWORD")
    return password


@target_app.command("add-webhook")
@one_line_errors
def add_webhook(
    name: str,
    url: Annotated[str, typer.Argument(help="http(s) URL that receives a signed JSON POST")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Webhook notifications; prints the HMAC-SHA256 key once (X-Sendense-Signature)."""
    added = _client(hub_url, token_file).post(
        f"{API}/targets", {"name": name, "webhook": {"url": url}}
    )
    print(
        f"target {added['target']['name']} added; its signing key (shown once, keep it):",
        file=sys.stderr,
    )
    print(added["secret"])


@target_app.command("list")
@one_line_errors
def list_targets(hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """Targets, their last delivery and their last error."""
    rows = _client(hub_url, token_file).get(f"{API}/targets")
    table(
        "Notification targets",
        ["name", "kind", "to", "last sent", "last error", "at"],
        [
            (
                t["name"],
                t["kind"],
                t["config"].get("url") or ", ".join(t["config"].get("recipients", [])),
                t["last_sent_at"],
                t["last_error"],
                t["last_error_at"],
            )
            for t in rows
        ],
    )


@target_app.command("remove")
@one_line_errors
def remove_target(name: str, hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """Remove a target with its rules."""
    client = _client(hub_url, token_file)
    client.request("DELETE", f"{API}/targets/{quote(name, safe='')}")
    console.print(f"target {name} removed")


@rule_app.command("add")
@one_line_errors
def add_rule(
    name: str,
    target: Annotated[str, typer.Option(help="The target's name")],
    event: Annotated[
        list[str],
        typer.Option(
            help="failed, warning, succeeded, invalid_point, repository_full, "
            "node_disconnected, stale_vm, daily_report (repeat for more)"
        ),
    ],
    vm: Annotated[str, typer.Option(help="VM name pattern (glob)")] = "*",
    kind: Annotated[list[str] | None, typer.Option(help="Task kind (repeat); all if none")] = None,
    free_below_percent: Annotated[float | None, typer.Option(help="repository_full")] = None,
    node_down_minutes: Annotated[float | None, typer.Option(help="node_disconnected")] = None,
    max_age_hours: Annotated[float | None, typer.Option(help="stale_vm")] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Send these events, for these VMs and task kinds, to a target."""
    body = {
        "name": name,
        "target": target,
        "events": event,
        "vm_pattern": vm,
        "kinds": kind or [],
        "free_below_percent": free_below_percent,
        "node_down_minutes": node_down_minutes,
        "max_age_hours": max_age_hours,
    }
    added = _client(hub_url, token_file).post(f"{API}/rules", body)
    console.print(f"rule {added['name']}: {', '.join(added['events'])} -> {added['target']}")


@rule_app.command("list")
@one_line_errors
def list_rules(hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    rows = _client(hub_url, token_file).get(f"{API}/rules")
    table(
        "Notification rules",
        ["name", "target", "events", "VMs", "kinds"],
        [
            (r["name"], r["target"], ", ".join(r["events"]), r["vm_pattern"], ", ".join(r["kinds"]))
            for r in rows
        ],
    )


@rule_app.command("remove")
@one_line_errors
def remove_rule(name: str, hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    _client(hub_url, token_file).request("DELETE", f"{API}/rules/{quote(name, safe='')}")
    console.print(f"rule {name} removed")


@notify_app.command("test")
@one_line_errors
def send_test(
    target: Annotated[str, typer.Argument(help="The target's name")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Send a test message to a target now; its server's refusal is the error."""
    _client(hub_url, token_file).post(f"{API}/targets/{quote(target, safe='')}/test", {})
    console.print(f"test message sent to {target}")
