"""The hub as a real process (`sendense hub serve`), for crash and CLI tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.rig.net import free_port, free_port_range
from tests.rig.procs import stop


class HubProcess:
    def __init__(self, data_dir: Path, database_url: str, pool: int = 8) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tunnel_port = free_port()
        rev_first, rev_last = free_port_range(4)
        first, last = free_port_range(pool)
        self.env = {
            **os.environ,
            "SENDENSE_HUB_DATABASE_URL": database_url,
            "SENDENSE_HUB_NBD_PORT_MIN": str(first),
            "SENDENSE_HUB_NBD_PORT_MAX": str(last),
            "SENDENSE_HUB_MIN_FREE_BYTES": "0",
            "SENDENSE_HUB_TUNNEL_PORT": str(self.tunnel_port),
            "SENDENSE_HUB_REVERSE_PORT_MIN": str(rev_first),
            "SENDENSE_HUB_REVERSE_PORT_MAX": str(rev_last),
            # hub and node share this machine: the node's end of the tunnel
            # shows the hub's ports on 127.0.0.2
            "SENDENSE_HUB_TARGETS_HOST": "127.0.0.2",
        }
        self.log = data_dir.parent / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "sendense",
            "hub",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"hub did not answer: {self.log.read_text()}")

    def initial_token(self) -> str:
        return (self.data_dir / "initial-api-token").read_text().strip()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=20)
