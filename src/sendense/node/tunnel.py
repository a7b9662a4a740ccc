"""The node's end of the tunnel: enrollment data, and a supervisor that keeps one
`ssh` connection to the hub up, restarting it with backoff when it dies.

Through the connection the node reaches the hub's API on its own loopback
address, and the hub reaches the node's API on its reverse port. Each NBD
connection is a session of its own on the running connection, opened through
its control socket (forwards.py). The hub's host key is pinned (StrictHostKeyChecking,
a known_hosts file of one line).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from sendense.common.processes import ChildProcess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TunnelConfig:
    hub_host: str
    tunnel_port: int
    node_name: str
    reverse_port: int
    nbd_port_min: int
    nbd_port_max: int
    api_port: int
    hub_host_key: str
    tunnel_user: str
    local_address: str = "127.0.0.1"
    node_api_port: int = 8081
    # The hub API certificate's SHA-256 (hex) pinned at enrollment; None: --insecure.
    hub_cert_sha256: str | None = None


def tunnel_dir(data_dir: Path) -> Path:
    return data_dir / "tunnel"


def save_config(data_dir: Path, config: TunnelConfig) -> None:
    directory = tunnel_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / "tunnel.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    key = " ".join(config.hub_host_key.split()[:2])
    (directory / "known_hosts").write_text(f"[{config.hub_host}]:{config.tunnel_port} {key}\n")


def load_config(data_dir: Path) -> TunnelConfig:
    path = tunnel_dir(data_dir) / "tunnel.json"
    try:
        return TunnelConfig(**json.loads(path.read_text()))
    except FileNotFoundError:
        from sendense.common.errors import NotFound

        raise NotFound(
            f"this node is not enrolled ({path} is missing): run `sendense node enroll`"
        ) from None


def control_path(data_dir: Path) -> Path:
    """The running connection's control socket: NBD sessions are opened through it."""
    return tunnel_dir(data_dir) / "control"


def dial_options(data_dir: Path, config: TunnelConfig) -> list[str]:
    """How every ssh connection of the node to the hub's sshd dials and
    authenticates: the node's key, the pinned host key, AES-GCM; no ssh_config,
    no agent, no password (nothing secret in an argument: the key is a path)."""
    directory = tunnel_dir(data_dir)
    return [
        "-F",
        "/dev/null",
        "-p",
        str(config.tunnel_port),
        "-i",
        str(directory / "id_ed25519"),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={directory / 'known_hosts'}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "HostKeyAlgorithms=ssh-ed25519",
        "-o",
        "ServerAliveInterval=10",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "ConnectTimeout=15",
        "-o",
        "Compression=no",
        "-o",
        "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com",
        "-o",
        "LogLevel=ERROR",
    ]


def ssh_argv(data_dir: Path, config: TunnelConfig, ssh: str = "ssh") -> list[str]:
    forwards = ["-L", f"{config.local_address}:{config.api_port}:127.0.0.1:{config.api_port}"]
    forwards += ["-R", f"127.0.0.1:{config.reverse_port}:127.0.0.1:{config.node_api_port}"]
    return [
        ssh,
        "-N",
        *dial_options(data_dir, config),
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "ControlMaster=yes",
        "-o",
        f"ControlPath={control_path(data_dir)}",
        *forwards,
        f"{config.tunnel_user}@{config.hub_host}",
    ]


class Supervisor:
    """Runs ssh; when it exits, waits 1, 2, 4 ... 30 s and starts it again. A
    connection that stayed up a minute resets the backoff. Status in status.json."""

    def __init__(self, data_dir: Path, ssh: str = "ssh", max_backoff: float = 30.0) -> None:
        self.data_dir = data_dir
        self.config = load_config(data_dir)
        self.argv = ssh_argv(data_dir, self.config, ssh)
        self.max_backoff = max_backoff
        self.status_path = tunnel_dir(data_dir) / "status.json"
        self.stderr_path = tunnel_dir(data_dir) / "ssh.log"
        self._stopping = False
        self._child: ChildProcess | None = None
        self.restarts = 0

    def _status(self, state: str, **extra: object) -> None:
        body = {
            "state": state,
            "hub": f"{self.config.hub_host}:{self.config.tunnel_port}",
            "supervisor_pid": os.getpid(),
            "restarts": self.restarts,
            "at": time.time(),
            **extra,
        }
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body) + "\n")
        os.replace(tmp, self.status_path)

    def _stop(self, _sig: int, _frame: FrameType | None) -> None:
        self._stopping = True
        if self._child is not None:
            self._child.terminate()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        backoff = 1.0
        failure: dict[str, str] = {}  # why the last try ended: shown until one connects
        while not self._stopping:
            started = time.monotonic()
            # ssh refuses to be the master over a control socket a killed one left.
            control_path(self.data_dir).unlink(missing_ok=True)
            self._child = ChildProcess(self.argv, log_path=self.stderr_path, append_log=True)
            self._child.spawn()
            self._status("connecting", ssh_pid=self._child.pid, **failure)
            if self._wait_forwards(self._child):
                failure = {}
                self._status("connected", ssh_pid=self._child.pid, since=time.time())
                log.info(
                    "tunnel up hub=%s:%d ssh_pid=%d",
                    self.config.hub_host,
                    self.config.tunnel_port,
                    self._child.pid,
                )
            code = self._child.wait()
            if self._stopping:
                break
            reason = self._last_error() or f"ssh exited {code}"
            if time.monotonic() - started > 60:
                backoff = 1.0
            self.restarts += 1
            failure = {"last_error": reason}
            self._status("reconnecting", retry_in=backoff, **failure)
            log.warning("tunnel down: %s; reconnecting in %.0fs", reason, backoff)
            deadline = time.monotonic() + backoff
            while not self._stopping and time.monotonic() < deadline:
                time.sleep(0.1)
            backoff = min(backoff * 2, self.max_backoff)
        self._status("stopped")

    def _wait_forwards(self, child: ChildProcess, timeout: float = 30.0) -> bool:
        """Up once the hub's API answers on our end of the tunnel."""
        deadline = time.monotonic() + timeout
        while child.poll() is None and not self._stopping and time.monotonic() < deadline:
            try:
                with socket.create_connection(
                    (self.config.local_address, self.config.api_port), timeout=1
                ):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def _last_error(self) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        text = lines[-1] if lines else ""
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in "\n".join(lines[-20:]) or (
            "Host key verification failed" in text
        ):
            return "the hub's host key changed: refusing to connect (re-enroll if expected)"
        return text
