"""`sendense node serve|token`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from sendense.cli.output import console, one_line_errors
from sendense.cli.serving import announce_token, appliance_settings, run_api
from sendense.common.errors import InvalidInput
from sendense.common.files import private_dir
from sendense.common.logging import setup_logging
from sendense.node.auth import NodeTokens
from sendense.node.config import NodeSettings

app = typer.Typer(help="The node appliance (SNA), next to vCenter.", no_args_is_help=True)
log = logging.getLogger(__name__)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file ([node] section)")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data directory")]


def _settings(config: Path | None, data_dir: Path | None, listen: str | None) -> NodeSettings:
    return appliance_settings(NodeSettings, config, data_dir, listen)


@app.command()
@one_line_errors
def serve(
    listen: Annotated[str | None, typer.Option(help="HOST:PORT (default 127.0.0.1:8081)")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the node API (backup/start, jobs, inventory)."""
    from sendense.node.api.app import create_node_app
    from sendense.node.limits import return_freed_buffers

    settings = _settings(config, data_dir, listen)
    setup_logging(settings.log_level)
    private_dir(settings.data_dir)
    tokens = NodeTokens(settings.data_dir)
    if tokens.count() == 0:
        announce_token(settings.data_dir, tokens.create("hub"))
    log.info("node listening on %s:%d", settings.listen_host, settings.listen_port)
    return_freed_buffers()
    run_api(create_node_app(settings), settings.listen_host, settings.listen_port)


@app.command("token")
@one_line_errors
def token(
    name: Annotated[str, typer.Option(help="A name to tell tokens apart")] = "hub",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a new node API token and print it once."""
    settings = _settings(config, data_dir, None)
    print(NodeTokens(settings.data_dir).create(name))


@app.command()
@one_line_errors
def enroll(
    hub: Annotated[
        str, typer.Option(help="The hub's API address: HOST[:PORT], [IPV6]:PORT, https://...")
    ],
    code_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the pairing code from `sendense hub pair` (else "
            "SENDENSE_PAIRING_CODE, else it is asked for); never an argument: any "
            "local user can read a process's arguments"
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="This node's name (default: hostname)")] = None,
    local_address: Annotated[
        str, typer.Option(help="Loopback address the hub's ports appear on here")
    ] = "127.0.0.1",
    hub_fingerprint: Annotated[
        str | None, typer.Option(help="The host key fingerprint `sendense hub pair` showed")
    ] = None,
    hub_cert_sha256: Annotated[
        str | None,
        typer.Option(help="The API certificate's SHA-256 `sendense hub pair` showed"),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(help="Labs only: trust whatever certificate and host key the hub shows"),
    ] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Join a hub over TLS: check its certificate, send this node's new key with the
    pairing code (from --code-file or SENDENSE_PAIRING_CODE, else asked for: never in argv), pin the
    hub's certificate and host key."""
    import socket
    import sys

    from sendense.node.enroll import enroll as do_enroll

    settings = _settings(config, data_dir, None)
    code = _pairing_code(code_file)
    if insecure:
        unchecked = [
            what
            for what, given in (("certificate", hub_cert_sha256), ("host key", hub_fingerprint))
            if given is None
        ]
        if unchecked:
            print(
                f"warning: --insecure is for labs: the hub's {' and '.join(unchecked)} "
                "are taken as received, unchecked; anyone on the path can read the "
                "pairing code and impersonate the hub",
                file=sys.stderr,
            )
    answer, own = do_enroll(
        settings,
        hub,
        code,
        name or socket.gethostname(),
        local_address,
        hub_fingerprint,
        hub_cert_sha256,
        insecure,
    )
    console.print(f"enrolled as [bold]{answer.node_name}[/bold] (node id {answer.node_id})")
    console.print(f"this node's key:  {own}")
    console.print(f"hub host key:     {answer.hub_host_key_fingerprint} (pinned)")
    if hub_cert_sha256 is not None:
        console.print(f"hub certificate:  {hub_cert_sha256.strip()} (pinned)")
    console.print("start the tunnel: sendense node tunnel")


def _pairing_code(code_file: Path | None) -> str:
    """The code `sendense hub pair` printed: from a file, the environment, a prompt
    that does not echo, or a line of stdin; never an argument (other users see argv)."""
    import os
    import sys

    if code_file is not None:
        code = code_file.read_text()
    elif os.environ.get("SENDENSE_PAIRING_CODE"):
        code = os.environ["SENDENSE_PAIRING_CODE"]
    elif sys.stdin.isatty():
        code = typer.prompt("pairing code", hide_input=True, err=True)
    else:
        code = sys.stdin.readline()
    code = code.strip()
    if not code:
        raise InvalidInput("no pairing code: --code-file, SENDENSE_PAIRING_CODE or standard input")
    return code


@app.command()
@one_line_errors
def tunnel(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Keep the tunnel to the hub up (foreground; systemd-ready)."""
    from sendense.node.tunnel import Supervisor

    settings = _settings(config, data_dir, None)
    setup_logging(settings.log_level)
    Supervisor(settings.data_dir).run()


@app.command()
@one_line_errors
def status(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """The tunnel's state: connected or reconnecting, and why."""
    import json
    import time

    from sendense.node.tunnel import load_config, tunnel_dir

    settings = _settings(config, data_dir, None)
    tunnel_config = load_config(settings.data_dir)
    console.print(
        f"node {tunnel_config.node_name} -> hub {tunnel_config.hub_host}:"
        f"{tunnel_config.tunnel_port}"
    )
    path = tunnel_dir(settings.data_dir) / "status.json"
    if not path.exists():
        console.print("tunnel: never started (run `sendense node tunnel`)")
        raise typer.Exit(1)
    state = json.loads(path.read_text())
    age = time.time() - float(state.get("at", 0))
    line = f"tunnel: {state['state']} ({age:.0f}s ago), restarts {state.get('restarts', 0)}"
    if state.get("last_error"):
        line += f", last error: {state['last_error']}"
    console.print(line)
    if state["state"] != "connected":
        raise typer.Exit(1)
