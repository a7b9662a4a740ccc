"""A node as real processes: `sendense node serve` and `sendense node tunnel`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.rig.cli import sendense
from tests.rig.net import free_port
from tests.rig.procs import stop


class NodeProcesses:
    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "SENDENSE_NODE_LISTEN_PORT": str(self.port),
            **{f"SENDENSE_NODE_{k.upper()}": v for k, v in settings.items()},
        }
        self.serve: subprocess.Popen[bytes] | None = None
        self.tunnel: subprocess.Popen[bytes] | None = None

    def enroll(
        self,
        hub_url: str,
        code: str,
        name: str,
        fingerprint: str | None = None,
        cert_sha256: str | None = None,
        *more: str,
    ) -> subprocess.CompletedProcess[str]:
        """`sendense node enroll`, the code in its environment; a pin left None is not
        given (`more`: other flags)."""
        pin = ["--hub-fingerprint", fingerprint] if fingerprint else []
        pin += ["--hub-cert-sha256", cert_sha256] if cert_sha256 else []
        return sendense(
            "node",
            "enroll",
            "--hub",
            hub_url.removeprefix("https://"),
            "--name",
            name,
            "--local-address",
            "127.0.0.2",
            "--data-dir",
            str(self.data_dir),
            *pin,
            *more,
            env={**self.env, "SENDENSE_PAIRING_CODE": code},
        )

    def _spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        with (self.data_dir.parent / log).open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "sendense", "node", *args, "--data-dir", str(self.data_dir)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def start_serve(self) -> None:
        self.serve = self._spawn("serve", "--listen", f"127.0.0.1:{self.port}", log="node.log")
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/api/v1/health", timeout=1)
                return
            except httpx.HTTPError:
                assert self.serve.poll() is None, "node serve exited"
                assert time.monotonic() < deadline, "node serve did not answer"
                time.sleep(0.1)

    def start_tunnel(self) -> None:
        self.tunnel = self._spawn("tunnel", log="tunnel.log")

    def stop_tunnel(self) -> None:
        if self.tunnel is not None:
            stop(self.tunnel)
            self.tunnel = None

    def tunnel_status(self) -> dict[str, object]:
        path = self.data_dir / "tunnel" / "status.json"
        try:
            status: dict[str, object] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return status

    def wait_tunnel(
        self, state: str, timeout: float = 30.0, restarts: int = 0
    ) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.tunnel_status()
            if status.get("state") == state and int(str(status.get("restarts", 0))) >= restarts:
                return status
            assert time.monotonic() < deadline, f"tunnel not {state}: {status}"
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in (self.tunnel, self.serve):
            if proc is not None:
                stop(proc)
