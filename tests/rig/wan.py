"""Latency in the rig: the delaying proxy of tests/rig/wan_proxy.py as a process,
started and stopped by PID in every outcome.

    with WanProxy(tmp_path, target_port=hub.tunnel_port, rtt_ms=20) as wan:
        ...  # dial 127.0.0.1:wan.port instead of the target

The process is `python -m tests.rig.wan_proxy` with the root's path in its
command line (its --stats file), so that `pids_with(str(root), name="python")`
finds it; it listens on a free port of its own choice unless `listen_port` is
given (a node's tunnel keeps its port across proxies of different delays).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.rig.procs import Started, stop

ROOT = Path(__file__).resolve().parents[2]


class WanProxy(Started):
    def __init__(
        self,
        root: Path,
        target_port: int,
        rtt_ms: float = 0.0,
        *,
        rate_mbps: float = 0.0,
        window_mib: float = 8.0,
        listen_port: int = 0,
    ) -> None:
        """`rate_mbps`: MB/s per direction (0: no limit); `window_mib`: what one
        direction of one connection holds at most (the path's TCP window)."""
        self.root = root
        self.target_port = target_port
        self.rtt_ms = rtt_ms
        self.rate_mbps = rate_mbps
        self.window_mib = window_mib
        self.port = listen_port
        self.stats_path = root / f"wan-{rtt_ms:g}ms.json"
        self.log = root / "wan.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.rig.wan_proxy",
            "--listen-port",
            str(self.port),
            "--target-port",
            str(self.target_port),
            "--rtt-ms",
            str(self.rtt_ms),
            "--rate-mbps",
            str(self.rate_mbps),
            "--window-mib",
            str(self.window_mib),
            "--stats",
            str(self.stats_path),
        ]

    def start(self, timeout: float = 15.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats_path.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv(),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline().decode() if ready else ""
        if not line.startswith("listening "):
            raise RuntimeError(f"the WAN proxy did not start: {line!r} {self.log.read_text()}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc, timeout=10)
            if self._proc.stdout is not None:
                self._proc.stdout.close()

    def stats(self) -> dict[str, Any]:
        """What the proxy wrote after its last finished connection (or at exit):
        connections, bytes each way, the most one direction held (`peak_held`)."""
        deadline = time.monotonic() + 5
        while not self.stats_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stats: dict[str, Any] = json.loads(self.stats_path.read_text())
        return stats
