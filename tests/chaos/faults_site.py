"""Faults beyond one process in a copy: the hub killed in a prune's merge, the
repository full, the repository not mounted when the hub starts, PostgreSQL
stopped and started mid-job."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx

from tests.chaos.fault import (
    Fault,
    Injection,
    MiB,
    kill9,
    restart_hub,
    start_changed_backup,
    wait_copying,
    wait_tunnel_up,
)
from tests.chaos.world import KEEP_LAST, POLICY, World
from tests.rig.procs import pids_with


class HubInMerge(Fault):
    """A prune that merges a removed point into its child; the hub is killed once a
    merge step is recorded (then a random moment later: while the child is read,
    rebased, proven, or the old layer removed)."""

    name = "hub in merge"

    def inject(self, world: World) -> Injection:
        while len(world.expected) <= KEEP_LAST:  # something for the policy to remove
            world.wait_node_idle()
            world.change(world.rng.randint(1, 4))
            assert world.backup()["state"] == "complete"
        body = {"vm": world.name, "policy": POLICY}
        self.thread = threading.Thread(target=_post_quietly, args=(world, body), daemon=True)
        self.thread.start()
        # the moment: steps recorded (then up to 0.1 s: the child read through its
        # old chain), a step rebased, or one disk's step finished and the next begun
        target = world.rng.choice(["recorded", "rebased", "one step done"])
        delay = world.rng.uniform(0.0, 0.1) if target == "recorded" else 0.0
        deadline = time.monotonic() + 60
        most = 0
        while self.thread.is_alive():
            states = [row[0] for row in world.sql("SELECT state FROM merges")]
            most = max(most, len(states))
            if (
                (target == "recorded" and states)
                or (target == "rebased" and "rebased" in states)
                or (target == "one step done" and 0 < len(states) < most)
            ):
                break
            assert time.monotonic() < deadline, "the prune reached no merge step"
            time.sleep(0.003)
        time.sleep(delay)
        steps = sorted(row[0] for row in world.sql("SELECT state FROM merges"))
        ended = "" if self.thread.is_alive() else ", the prune had ended"
        assert world.site.hub.proc is not None
        kill9(world.site.hub.proc.pid)
        return Injection(f"{target}: steps {steps or 'gone'} +{delay:.2f} s{ended}")

    def recover(self, world: World, injection: Injection) -> None:
        assert world.site.hub.proc is not None
        world.site.hub.proc.wait()
        world.site.hub.start()  # start-up rolls the merge steps forward
        self.thread.join(timeout=60)
        world.forget_pruned()
        wait_tunnel_up(world)


def _post_quietly(world: World, body: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the hub is killed under the request
        world.site.api.post("/api/v1/prune", json=body)


class RepositoryFull(Fault):
    """The repository's filesystem has a few MiB left when a backup writes more."""

    name = "repository full"

    def inject(self, world: World) -> Injection:
        left = world.rng.randint(1, 6) * MiB
        before = world.rng.random() < 0.5  # else once the backup has started
        if before:
            world.storage.fill(left)
        injection = start_changed_backup(world, mib=(10, 16))
        if not before:
            world.storage.fill(left)
        assert injection.job_id is not None
        job = world.site.wait_job(injection.job_id, timeout=180)
        when = "before" if before else "after"
        injection.at = f"{left // MiB} MiB free {when} start {injection.at}, job {job['state']}"
        return injection

    def recover(self, world: World, injection: Injection) -> None:
        world.storage.drain()


class RepositoryUnmounted(Fault):
    """The hub is killed in a copy; it starts again without its repository mounted:
    it must serve, refuse to back up into the empty mountpoint, and once the
    repository is back (and the hub restarted) hold nothing of the dead job."""

    name = "repository unmounted"

    def inject(self, world: World) -> Injection:
        injection = start_changed_backup(world)
        assert injection.job_id is not None
        state = wait_copying(world, injection.job_id, world.rng.uniform(0.05, 0.8))
        # the hub's machine goes down: the hub and its qemu-nbd die together
        assert world.site.hub.proc is not None
        exports = pids_with(str(world.storage.repo))
        kill9(world.site.hub.proc.pid)
        world.site.hub.proc.wait()
        for pid in exports:
            kill9(pid)
        world.storage.unmount()
        world.site.hub.start()
        assert world.site.api.get("/api/v1/repositories").status_code == 200
        wait_tunnel_up(world)
        world.wait_node_idle()
        refused = world.site.wait_job(world.start_backup(), timeout=180)
        assert refused["state"] == "failed", refused
        assert list(world.storage.repo.iterdir()) == [], "a backup wrote to the empty mountpoint"
        injection.at = f"{state} {injection.at}; next backup {refused['state']}"
        return injection

    def recover(self, world: World, injection: Injection) -> None:
        world.storage.remount()
        restart_hub(world)
        wait_tunnel_up(world)


class DatabaseStopped(Fault):
    """PostgreSQL stops (fast shutdown: every connection cut) while a backup
    copies, and starts again a few seconds later."""

    name = "postgresql stopped"
    postgres_only = True

    def inject(self, world: World) -> Injection:
        assert world.postgres is not None
        injection = start_changed_backup(world)
        assert injection.job_id is not None
        state = wait_copying(world, injection.job_id, world.rng.uniform(0.05, 0.8))
        down = world.rng.uniform(0.5, 4.0)
        world.postgres.halt()
        try:
            time.sleep(down)
        finally:
            world.postgres.resume()
        injection.at = f"{state} {injection.at}, down {down:.1f} s"
        return injection

    def recover(self, world: World, injection: Injection) -> None:
        hub = world.site.hub.proc
        if hub is not None and hub.poll() is not None:
            injection.at += f"; the hub exited {hub.returncode}, started again"
            world.site.hub.start()
        wait_tunnel_up(world)
