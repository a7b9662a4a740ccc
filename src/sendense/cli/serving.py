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
from uvicorn.protocols.http.h11_impl import H11Protocol

from sendense.cli.output import console
from sendense.common.config import S, load_settings
from sendense.common.errors import Conflict, InvalidInput
from sendense.common.files import private_dir
from sendense.common.host_check import HostCheck
from sendense.common.tls import cert_file_fingerprint, ensure_self_signed, is_loopback
from sendense.hub.config import HubSettings

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


def run_api(app: FastAPI, host: str, port: int, tls: tuple[Path, Path] | None = None) -> None:
    """uvicorn with our logging (no access log: requests carry tokens in headers).
    `tls`: (certificate, key) files to serve HTTPS with."""
    if tls is None:
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
        return
    cert, key = tls
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        http=_TlsH11Protocol,
    )


class _TlsH11Protocol(H11Protocol):
    """An idle TLS connection is cut, not closed: asyncio's TLS close waits up to
    30 s for the client's close_notify, which an idle keep-alive client never
    sends, and uvicorn waits for every connection before it stops (so the hub
    would stop 30 s late, or be killed by its service manager with its sshd)."""

    def shutdown(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        super().shutdown()
        if idle:
            self.transport.abort()

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self.transport.abort()


def run_hub_api(app: FastAPI, settings: HubSettings) -> None:
    """TLS unless the operator turned it off on a loopback address; then plain
    HTTP with the Host header checked (no DNS rebinding from a browser)."""
    host, port = settings.listen_host, settings.listen_port
    if settings.tls:
        run_api(app, host, port, (settings.api_cert, settings.api_key))
        return
    log.warning("hub API is plain HTTP on %s:%d (tls = false): loopback only", host, port)
    uvicorn.run(HostCheck(app, host, port), host=host, port=port, log_config=None, access_log=False)


def hub_certificate(settings: HubSettings) -> str | None:
    """Make the hub's self-signed certificate at first start (unless the operator
    gave one); its SHA-256 (hex), or None when the API is plain HTTP. A plain-HTTP
    API on anything but loopback is refused."""
    if not settings.tls:
        if not is_loopback(settings.listen_host):
            raise InvalidInput(
                f"tls = false is allowed only on a loopback listen address, "
                f"not {settings.listen_host}: the API carries tokens and passwords"
            )
        return None
    if settings.tls_cert is None:
        private_dir(settings.api_cert.parent)
        if ensure_self_signed(settings.api_cert, settings.api_key, settings.listen_host):
            log.info(
                "first start: made the API's TLS key and certificate in %s",
                settings.api_cert.parent,
            )
    elif not settings.api_key.is_file():
        raise InvalidInput(f"tls_key {settings.api_key} does not exist")
    return cert_file_fingerprint(settings.api_cert)


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
