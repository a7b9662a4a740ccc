"""SIGKILL of one process while a backup copies: the hub, the node's API, the node's
ssh tunnel, the hub's sshd, or one of the job's qemu-nbd."""

from __future__ import annotations

from tests.chaos.fault import (
    Fault,
    Injection,
    kill9,
    node_progress,
    restart_hub,
    start_changed_backup,
    wait_copying,
    wait_tunnel_up,
)
from tests.chaos.processes import sshd_listener
from tests.chaos.world import World
from tests.rig.procs import pids_with


class CopyKill(Fault):
    """Wait until a random share of the copy is done, then SIGKILL the victim."""

    job_id: str | None = None

    def inject(self, world: World) -> Injection:
        injection = start_changed_backup(world)
        assert injection.job_id is not None
        self.job_id = injection.job_id
        state = wait_copying(world, injection.job_id, world.rng.uniform(0.05, 0.8))
        victim = self.victim(world)
        if victim is None:
            injection.at = f"{state} {injection.at}, nothing left to kill"
        else:
            kill9(victim)
            injection.at = f"{state} {injection.at}"
        return injection

    def victim(self, world: World) -> int | None:
        raise NotImplementedError


class HubInCopy(CopyKill):
    name = "hub in copy"

    def victim(self, world: World) -> int | None:
        assert world.site.hub.proc is not None
        return world.site.hub.proc.pid

    def recover(self, world: World, injection: Injection) -> None:
        assert world.site.hub.proc is not None
        world.site.hub.proc.wait()
        world.site.hub.start()
        wait_tunnel_up(world)


class NodeInCopy(CopyKill):
    name = "node in copy"

    def victim(self, world: World) -> int | None:
        assert world.site.node.serve is not None
        return world.site.node.serve.pid

    def recover(self, world: World, injection: Injection) -> None:
        assert world.site.node.serve is not None
        world.site.node.serve.wait()
        world.site.node.start_serve()
        wait_tunnel_up(world)


class TunnelInCopy(CopyKill):
    name = "node ssh in copy"

    def victim(self, world: World) -> int | None:
        status = world.site.node.tunnel_status()
        self.restarts = int(str(status.get("restarts", 0)))
        pid = status.get("ssh_pid")
        assert isinstance(pid, int), status
        return pid

    def recover(self, world: World, injection: Injection) -> None:
        # the node's supervisor starts ssh again by itself
        world.site.node.wait_tunnel("connected", timeout=90, restarts=self.restarts + 1)
        wait_tunnel_up(world)


class SshdInCopy(CopyKill):
    name = "hub sshd in copy"

    def victim(self, world: World) -> int | None:
        pid = sshd_listener(world.site)
        assert pid is not None, "the hub's sshd wrote no pid file"
        return pid

    def recover(self, world: World, injection: Injection) -> None:
        # nothing in a hub watches its sshd: its restart starts one
        restart_hub(world)
        wait_tunnel_up(world)


class QemuNbdInCopy(CopyKill):
    name = "qemu-nbd in copy"

    def victim(self, world: World) -> int | None:
        """One of the job's qemu-nbd, of a disk still being written if any."""
        assert self.job_id is not None
        disks = node_progress(world, self.job_id) or []
        copying = {d["disk_key"] for d in disks if d["bytes_done"] < d["bytes_total"]}
        rows = world.sql("SELECT pid, disk_key FROM nbd_exports WHERE job_id = :j", j=self.job_id)
        alive = set(pids_with(str(world.storage.repo)))
        exports = sorted(pid for pid, key in rows if pid in alive and key in copying)
        exports = exports or sorted(pid for pid, _key in rows if pid in alive)
        return world.rng.choice(exports) if exports else None

    def recover(self, world: World, injection: Injection) -> None:
        pass  # the hub fails the job and stops its other exports
