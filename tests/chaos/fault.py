"""What every fault is: it makes something happen and says in which state it landed
(`inject`), then brings back what it broke (`recover`). Helpers to wait for a state."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from tests.chaos.processes import stray_sshd
from tests.chaos.world import Digests, World
from tests.rig.procs import wait_gone

MiB = 1 << 20


@dataclass
class Injection:
    at: str  # the state the fault landed in
    job_id: str | None = None
    digests: Digests | None = None  # the source as that job read it


class Fault:
    name: ClassVar[str]
    postgres_only: ClassVar[bool] = False

    def inject(self, world: World) -> Injection:
        raise NotImplementedError

    def recover(self, world: World, injection: Injection) -> None:
        raise NotImplementedError


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid], timeout=10) == [], f"pid {pid} survived SIGKILL"


def start_changed_backup(world: World, mib: tuple[int, int] = (12, 24)) -> Injection:
    """The guest writes, then a backup starts: mostly a full (the longest copy),
    else an incremental."""
    world.wait_node_idle()
    world.change(world.rng.randint(*mib))
    digests = world.digests()
    kind = "full" if world.rng.random() < 0.7 else "auto"
    return Injection(f"({kind})", world.start_backup(kind), digests)


def node_progress(world: World, job_id: str) -> list[dict[str, Any]] | None:
    """The copy's disks as the node reports them now (the hub's view lags a poll)."""
    try:
        status = world.node_api().get(f"/api/v1/jobs/{job_id}")
    except httpx.HTTPError:
        return None
    if status.status_code != 200:
        return None
    disks: list[dict[str, Any]] = status.json()["disks"]
    return disks


def wait_copying(world: World, job_id: str, fraction: float, timeout: float = 120.0) -> str:
    """Wait until the copy has done `fraction` of its bytes; the state seen then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        disks = node_progress(world, job_id) or []
        done = sum(d["bytes_done"] for d in disks)
        total = sum(d["bytes_total"] for d in disks)
        if total and done and done >= fraction * total and done < total:
            return f"copy {done / MiB:.0f}/{total / MiB:.0f} MiB"
        state = world.job(job_id)["state"]
        if state in ("complete", "failed", "cancelled"):
            return f"job already {state}"
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never copied")


def restart_hub(world: World) -> None:
    """Stop the hub as a service manager would (SIGTERM), start it again."""
    world.site.hub.stop()
    world.site.hub.start()


def wait_tunnel_up(world: World, timeout: float = 90.0) -> None:
    """The node's tunnel reaches the hub's current sshd and the hub sees the node.

    The node's ssh supervisor waits 1, 2, 4 ... 30 s between attempts, and faults
    in a row grow that wait: instead of waiting out a pause longer than 2 s, the
    tunnel process is restarted (as `systemctl restart` would), to keep rounds short."""
    site = world.site
    deadline = time.monotonic() + timeout
    while True:
        status = site.node.tunnel_status()
        if status.get("state") == "reconnecting" and float(str(status.get("retry_in", 0))) > 2:
            site.node.stop_tunnel()
            site.node.start_tunnel()
            time.sleep(0.5)
            continue
        pid = status.get("ssh_pid")
        alive = isinstance(pid, int) and os.path.exists(f"/proc/{pid}")
        try:
            nodes = site.api.get("/api/v1/nodes").json()
        except httpx.HTTPError:
            nodes = []
        seen = any(n["name"] == site.name and n["connected"] for n in nodes)
        if status.get("state") == "connected" and alive and seen and not stray_sshd(site):
            return
        assert time.monotonic() < deadline, f"tunnel not back: {status} {nodes}"
        time.sleep(0.2)
