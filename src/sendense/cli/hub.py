"""`sendense hub serve|status|token`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.durations import parse_duration
from sendense.cli.output import console, one_line_errors, repo_table, table
from sendense.cli.serving import (
    announce_token,
    appliance_settings,
    hold_lock,
    hub_certificate,
    run_hub_api,
)
from sendense.common.errors import InvalidInput
from sendense.common.files import private_dir
from sendense.common.logging import setup_logging
from sendense.common.tls import display_fingerprint
from sendense.hub.config import HubSettings

app = typer.Typer(help="The hub appliance (SHA).", no_args_is_help=True)
log = logging.getLogger(__name__)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file ([hub] section)")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data directory")]
HubUrlOpt = Annotated[str | None, typer.Option("--hub", help="Hub API URL (env SENDENSE_HUB_URL)")]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option("--token-file", help="File holding the API token (env SENDENSE_TOKEN)"),
]


def _settings(config: Path | None, data_dir: Path | None, listen: str | None) -> HubSettings:
    return appliance_settings(HubSettings, config, data_dir, listen)


@app.command()
@one_line_errors
def serve(
    listen: Annotated[str | None, typer.Option(help="HOST:PORT (default 127.0.0.1:8082)")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the hub: clean up after a crash, then serve the API."""
    from sendense.hub.api.app import create_app
    from sendense.hub.service import Hub

    settings = _settings(config, data_dir, listen)
    setup_logging(settings.log_level)
    private_dir(settings.data_dir)
    lock = hold_lock(settings.data_dir / "hub.lock")  # kept open while the hub runs
    cert_sha256 = hub_certificate(settings)  # before anything starts: a bad setting stops here
    hub = Hub.open(settings)
    hub.reconcile()
    hub.start_tunnel()
    if hub.tokens.count() == 0:
        announce_token(settings.data_dir, hub.tokens.create("admin", created_by="first-start"))
    log.info(
        "hub listening on %s://%s:%d data=%s",
        "https" if cert_sha256 else "http",
        settings.listen_host,
        settings.listen_port,
        settings.data_dir,
    )
    if cert_sha256:
        log.info("API certificate SHA-256 %s", display_fingerprint(cert_sha256))
    try:
        run_hub_api(create_app(hub), settings)
    finally:
        hub.close()
        lock.close()  # the lock also dies with the process, whatever kills it


@app.command("token")
@one_line_errors
def token(
    name: Annotated[str, typer.Option(help="A name to tell tokens apart")] = "admin",
    role: Annotated[str, typer.Option(help="admin, operator or viewer")] = "admin",
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime: 90m, 12h, 30d, 8w (default: none)")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a new API token in the hub's database and print it once (offline, on
    the hub's machine: the way in when no admin token is left)."""
    from sendense.hub.auth.roles import Role
    from sendense.hub.service import Hub

    if role not in {r.value for r in Role}:
        raise InvalidInput(f"--role {role!r}: use admin, operator or viewer")
    lifetime = parse_duration(expires_in) if expires_in is not None else None
    hub = Hub.open(_settings(config, data_dir, None))
    try:
        print(hub.tokens.create(name, Role(role), lifetime, created_by="cli"))
    finally:
        hub.db.dispose()


@app.command()
@one_line_errors
def pair(
    address: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT the node reaches the API at (default: the listen address; "
            "this machine's name when the API listens on every address)"
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print a single-use pairing code for `sendense node enroll` (expires in 15
    minutes), and the enroll command to run on the node."""
    from sendense.hub.service import Hub

    settings = _settings(config, data_dir, None)
    cert_sha256 = hub_certificate(settings)  # made at first start
    hub = Hub.open(settings)
    try:
        pairing = hub.pair(address or _api_address(settings))
    finally:
        hub.db.dispose()
    print(pairing.code)
    print(
        f"expires {pairing.expires_at:%Y-%m-%d %H:%M} UTC; on the node run (it asks for "
        f"the code):\n  {pairing.enroll_command}",
        file=sys.stderr,
    )
    if cert_sha256 is None:
        print("the API is plain HTTP (tls = false): nodes enroll over TLS only", file=sys.stderr)


def _api_address(settings: HubSettings) -> str:
    """HOST:PORT of the API as a node reaches it: the listen address, or this
    machine's name when the API listens on every address."""
    import socket

    host = settings.listen_host
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"[{host}]:{settings.listen_port}" if ":" in host else f"{host}:{settings.listen_port}"


@app.command()
@one_line_errors
def status(hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """Health, repositories, the port pool and running exports."""
    client = HubClient(hub_url, read_token(token_file))
    health = client.get("/api/v1/health")
    console.print(
        f"hub {client.url}: {health['status']} (version {health['version']}, "
        f"database {health['database']})"
    )
    repos = client.get("/api/v1/repositories")
    repo_table("Repositories", repos)
    pool = client.get("/api/v1/ports")
    console.print(
        f"NBD ports {pool['first']}-{pool['last']}: {pool['used']} used, {pool['free']} free"
    )
    nodes = client.get("/api/v1/nodes")
    table(
        "Nodes",
        ["name", "connected", "last seen", "key", "revoked"],
        [
            (n["name"], n["connected"], n["last_seen"], n["key_fingerprint"], n["revoked"])
            for n in nodes
        ],
    )
    exports = client.get("/api/v1/exports")
    table(
        "Exports",
        ["port", "export", "job", "disk", "pid", "alive"],
        [
            (e["port"], e["export_name"], e["job_id"], e["disk_key"], e["pid"], e["alive"])
            for e in exports
        ],
    )
