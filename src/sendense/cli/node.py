"""`sendense node serve|token`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from sendense.cli.output import one_line_errors
from sendense.cli.serving import announce_token, parse_listen
from sendense.common.config import load_settings
from sendense.common.logging import setup_logging
from sendense.node.auth import NodeTokens
from sendense.node.config import NodeSettings

app = typer.Typer(help="The node appliance (SNA), next to vCenter.", no_args_is_help=True)
log = logging.getLogger(__name__)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file ([node] section)")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data directory")]


def _settings(config: Path | None, data_dir: Path | None, listen: str | None) -> NodeSettings:
    host, port = parse_listen(listen) if listen else (None, None)
    return load_settings(
        NodeSettings, config, data_dir=data_dir, listen_host=host, listen_port=port
    )


@app.command()
@one_line_errors
def serve(
    listen: Annotated[str | None, typer.Option(help="HOST:PORT (default 127.0.0.1:8081)")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the node API (backup/start, jobs, inventory)."""
    from sendense.node.api.app import create_node_app

    settings = _settings(config, data_dir, listen)
    setup_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = NodeTokens(settings.data_dir)
    if tokens.count() == 0:
        announce_token(settings.data_dir, tokens.create("hub"))
    log.info("node listening on %s:%d", settings.listen_host, settings.listen_port)
    uvicorn.run(
        create_node_app(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        log_config=None,
        access_log=False,
    )


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
