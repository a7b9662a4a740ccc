"""How the node reaches the hub's NBD exports a job names.

A target `nbd://ADDR:PORT/NAME` whose ADDR is the node's end of the tunnel is
the hub's export of pool port PORT. For the job's time the node listens on a
Unix socket of its own, `<tunnel dir>/sockets/PORT.sock` (0600 in a 0700
directory: no other local user of the node connects), and hands each connection
to an `ssh` client as stdin and stdout: an ssh connection of its own to the
hub's sshd, dialled and authenticated as the tunnel's (same key, pinned host
key, ciphers), that opens a session `nbd PORT`, which the hub's sshd runs as
this node's NBD relay to its own export socket (hub/nodes/nbd_relay.py). One
TCP and one SSH connection per NBD connection: OpenSSH's fixed channel window
(2 MiB) and one connection's TCP window bound what a connection carries per
round trip, so a disk written over several NBD connections is not bound by one
of them (docs/decisions.md, "Latency between node and hub"). The bytes go from
the socket to ssh directly; SSH alone encrypts them; no TCP port carries NBD on
either machine.

Any other address is dialled as given (a node without a tunnel, tests), except
that with `hub_export_dir` set (a node on the hub's own machine, as the hub's
user: the hub's `<data_dir>/nbd`) it is the export's socket there: no tunnel, no
encryption.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path

from sendense.common.errors import NotFound, SendenseError
from sendense.common.files import private_dir
from sendense.common.targets import NbdTarget
from sendense.nbd.protocol import parse_uri
from sendense.nbd.round_trips import path_of
from sendense.node.tunnel import TunnelConfig, dial_options, load_config, tunnel_dir

log = logging.getLogger(__name__)
MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path, less its NUL


def sockets_dir(data_dir: Path) -> Path:
    return private_dir(tunnel_dir(data_dir) / "sockets")


def socket_uri(path: Path | str, export: str) -> str:
    return f"nbd+unix:///{export}?socket={path}"


def session_argv(
    data_dir: Path, port: int, ssh: str = "ssh", config: TunnelConfig | None = None
) -> list[str]:
    """An ssh client whose stdin and stdout are one NBD connection to the hub's
    export of `port`: its own connection to the hub's sshd (its own TCP window and
    SSH channel window, its own process doing the crypto), dialled and
    authenticated as the tunnel is (tunnel.dial_options), never through the
    tunnel's control socket."""
    if config is None:
        config = load_config(data_dir)
    return [
        ssh,
        *dial_options(data_dir, config),
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-T",
        "-e",
        "none",
        f"{config.tunnel_user}@{config.hub_host}",
        "nbd",
        str(port),
    ]


class HubExports:
    """The URIs a job's NBD clients dial, and the listeners behind them."""

    def __init__(
        self, data_dir: Path, hub_export_dir: Path | None = None, ssh: str = "ssh"
    ) -> None:
        self.data_dir = data_dir
        self.hub_export_dir = hub_export_dir
        self.ssh = ssh
        self._listeners: dict[int, socket.socket] = {}
        self._sessions: dict[int, set[asyncio.subprocess.Process]] = {}
        self._tasks: dict[int, set[asyncio.Task[None]]] = {}
        self._configs: dict[int, TunnelConfig] = {}  # the tunnel settings a listener dials with

    def path_key(self, uri: str) -> str:
        """What the round trips of `uri` are remembered under (nbd/round_trips.py):
        for the tunnel, its hub and the time its connection came up, so a tunnel
        that connects again (another route, another hub address) is measured
        afresh; else the URI's own path."""
        host, port, _export = parse_uri(uri)
        if port == 0 and Path(host).parent == tunnel_dir(self.data_dir) / "sockets":
            try:
                status = json.loads((tunnel_dir(self.data_dir) / "status.json").read_text())
                return f"tunnel {status.get('hub')} up since {status.get('since')}"
            except (OSError, ValueError):
                return "tunnel"
        return path_of(uri)

    def _tunnel(self) -> TunnelConfig | None:
        try:
            return load_config(self.data_dir)
        except NotFound:
            return None

    async def open(self, targets: list[NbdTarget]) -> dict[int, str]:
        """Per disk key, the URI to dial; listeners made for the tunnelled ones."""
        config = self._tunnel()
        uris: dict[int, str] = {}
        try:
            for target in targets:
                uris[target.disk_key] = self._open(config, target)
        except BaseException:
            await self.close(targets)
            raise
        return uris

    def _open(self, config: TunnelConfig | None, target: NbdTarget) -> str:
        if config is None or target.host != config.local_address:
            if self.hub_export_dir is not None:  # ports are unique across the nodes' dirs
                found = sorted(self.hub_export_dir.glob(f"*/{target.port}.sock"))
                path = found[0] if found else self.hub_export_dir / f"{target.port}.sock"
                return socket_uri(path, target.export)
            return target.uri
        path = sockets_dir(self.data_dir) / f"{target.port}.sock"
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise SendenseError(f"{path} is too long for a Unix socket: use a shorter data_dir")
        path.unlink(missing_ok=True)  # a listener of a job the node did not close
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            path.chmod(0o600)
            listener.listen(16)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listeners[target.port] = listener
        self._configs[target.port] = config
        loop = asyncio.get_running_loop()
        loop.add_reader(listener.fileno(), self._accept, target.port, listener)
        log.info("NBD listener opened port=%d", target.port)
        return socket_uri(path, target.export)

    def _accept(self, port: int, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        task = asyncio.get_running_loop().create_task(self._session(port, conn))
        tasks = self._tasks.setdefault(port, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _session(self, port: int, conn: socket.socket) -> None:
        """One NBD connection: the ssh client holds it until either side ends it."""
        try:
            conn.setblocking(True)
            proc = await asyncio.create_subprocess_exec(
                *session_argv(self.data_dir, port, self.ssh, self._configs.get(port)),
                stdin=conn.fileno(),
                stdout=conn.fileno(),
                stderr=asyncio.subprocess.PIPE,
            )
        finally:
            conn.close()  # ssh has its own copy
        procs = self._sessions.setdefault(port, set())
        procs.add(proc)
        try:
            _, err = await proc.communicate()
        finally:
            procs.discard(proc)
        if proc.returncode:
            why = err.decode(errors="replace").strip().splitlines()
            log.warning(
                "NBD session port=%d ended with %d: %s",
                port,
                proc.returncode,
                why[-1] if why else "no output",
            )

    async def close(self, targets: list[NbdTarget]) -> None:
        """Stop the targets' listeners and any session still open on them."""
        loop = asyncio.get_running_loop()
        for target in targets:
            listener = self._listeners.pop(target.port, None)
            self._configs.pop(target.port, None)
            if listener is None:
                continue
            loop.remove_reader(listener.fileno())
            listener.close()
            (sockets_dir(self.data_dir) / f"{target.port}.sock").unlink(missing_ok=True)
            for proc in self._sessions.pop(target.port, set()):
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            tasks = self._tasks.pop(target.port, set())
            if tasks:  # each ends with its ssh client
                await asyncio.wait(tasks, timeout=10)
            log.info("NBD listener closed port=%d", target.port)
