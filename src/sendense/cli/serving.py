"""What `hub serve` and `node serve` share: the listen address and the first token."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import IO

import uvicorn
from fastapi import FastAPI

from sendense.cli.output import console
from sendense.common.config import S, load_settings
from sendense.common.errors import Conflict, InvalidInput

log = logging.getLogger(__name__)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"--listen {listen!r}: use HOST:PORT, for example 127.0.0.1:8082")
    return host.strip("[]"), int(port)


def appliance_settings(
    cls: type[S], config: Path | None, data_dir: Path | None, listen: str | None
) -> S:
    """Settings from defaults, the TOML file, the environment, then the flags given."""
    host, port = parse_listen(listen) if listen else (None, None)
    return load_settings(cls, config, data_dir=data_dir, listen_host=host, listen_port=port)


def run_api(app: FastAPI, host: str, port: int) -> None:
    """uvicorn with our logging (no access log: requests carry tokens in headers)."""
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


def announce_token(data_dir: Path, token: str) -> None:
    """Shown once. On a terminal it is printed; under a service manager stdout is a
    log, so the token goes to a 0600 file instead and only its path is logged."""
    if sys.stdout.isatty():
        console.print(f"API token (shown once, keep it): [bold]{token}[/bold]")
        return
    path = data_dir / "initial-api-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    log.warning("first start: API token written to %s (read it, then delete the file)", path)


def hold_lock(path: Path) -> IO[str]:
    """An exclusive lock on the data directory: a second hub on it would fail the
    first one's jobs and stop its qemu-nbd and sshd as crash leftovers."""
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Conflict(f"another hub is running on {path.parent}") from None
    return handle
