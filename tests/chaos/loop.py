"""The chaos loop: a site on a private PostgreSQL (or SQLite), a repository on a
small tmpfs, a two-disk VM with complete points; then rounds of one random fault,
a restart, the invariants, the next backup and a prune."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chaos.fault import Fault
from tests.chaos.faults_copy import HubInCopy, NodeInCopy, QemuNbdInCopy, SshdInCopy, TunnelInCopy
from tests.chaos.faults_site import DatabaseStopped, HubInMerge, RepositoryFull, RepositoryUnmounted
from tests.chaos.invariants import check_all, no_snapshot
from tests.chaos.pg import StoppablePostgres
from tests.chaos.storage import Storage
from tests.chaos.world import World
from tests.rig.procs import kill_all, pids_with, wait_gone
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim

FAULTS: list[type[Fault]] = [
    HubInCopy,
    HubInMerge,
    NodeInCopy,
    TunnelInCopy,
    SshdInCopy,
    QemuNbdInCopy,
    RepositoryFull,
    RepositoryUnmounted,
    DatabaseStopped,
]
# One MiB at a time, one read and one write in flight: a copy lasts long enough
# to be caught in the middle.
SLOW_NODE = {"chunk_mib": "1", "readers_per_disk": "1", "writes_in_flight": "1"}


@dataclass
class Row:
    round: int
    fault: str
    at: str
    job: str
    survived: bool
    seconds: float
    error: str = ""


@contextmanager
def chaos_world(tmp: Path, vcsim: Vcsim, si: Any, seed: int, postgresql: bool) -> Iterator[World]:
    """Everything the loop needs, stopped by PID and unmounted in every outcome."""
    storage = Storage(tmp / "storage")
    postgres = StoppablePostgres() if postgresql else None
    site: Site | None = None
    world: World | None = None
    try:
        storage.mount()
        url = None
        if postgres is not None:
            postgres.start()
            url = postgres.admin_url(postgres.create_database())
        site = Site(
            tmp / "site",
            hub_settings={"node_timeout_s": "10", "snapshot_sweep_s": "5"},
            repository_roots=tmp,  # the repository is `storage`'s mount, beside the site
            database_url=url,
            snapshot_hunt_interval_s="10",
            **SLOW_NODE,
        )
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        world = World(site, vcsim, si, storage, seed, postgres)
        world.prepare()
        yield world
    finally:
        if world is not None:
            world.close()
        if site is not None:
            site.stop()
        if postgres is not None:
            postgres.stop()
        # a round that failed between a kill and its restart leaves the dead
        # hub's qemu-nbd and sshd: every process naming this test's directory
        left = [p for p in pids_with(str(tmp), name="") if p != os.getpid()]
        kill_all(left)
        wait_gone(left)
        storage.close()


def one_round(world: World, fault: Fault, row: Row) -> None:
    """The fault, the restart, the invariants, then the next backup and a prune."""
    injection = fault.inject(world)
    row.at = injection.at
    fault.recover(world, injection)
    row.at = injection.at  # a recovery may add to it
    if injection.job_id is not None:
        job = world.site.wait_job(injection.job_id, timeout=180)
        row.job = job["state"]
        if job["state"] == "complete":
            assert injection.digests is not None
            assert world.record(job["id"], injection.digests), f"{job['id']} has no point"
    # The node cleans up after its own failed copy; a node that was killed, once
    # restarted, gets its vCenter's login from the hub's sweep and cleans up then.
    no_snapshot(world)
    check_all(world)
    world.wait_node_idle()
    world.change(world.rng.randint(1, 4))
    job = world.backup()
    assert job["state"] == "complete", f"the next backup: {job}"
    no_snapshot(world)
    pruned = world.prune()
    assert pruned.status_code == 200, pruned.text


def fault_order(rng: random.Random, faults: list[type[Fault]], rounds: int) -> list[type[Fault]]:
    """The fault of each round: every fault once, in a seeded random order, then
    every fault again in another, as long as rounds last. A short run meets as many
    kinds as it has rounds (independent draws met about 5.5 of 9 in 8 rounds), a
    long one meets each as often as the others."""
    order: list[type[Fault]] = []
    while len(order) < rounds:
        order += rng.sample(faults, len(faults))
    return order[:rounds]


def run(world: World, rounds: int, faults: list[type[Fault]], rows: list[Row]) -> None:
    """Rounds until one fails: its row says why, and the exception goes on."""
    for _ in range(2):  # a VM that already has complete points
        assert world.backup()["state"] == "complete"
    for number, kind in enumerate(fault_order(world.rng, faults, rounds), start=1):
        fault = kind()
        row = Row(number, fault.name, "", "-", False, 0.0)
        rows.append(row)
        started = time.monotonic()
        try:
            one_round(world, fault, row)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            row.seconds = time.monotonic() - started
        row.survived = True
        print(table([row], header=number == 1), flush=True)
    check_all(world)


def table(rows: list[Row], header: bool = True) -> str:
    lines = [f"{'round':>5}  {'fault':<22} {'job':<9} {'survived':<8} {'s':>5}  injected at"]
    lines = lines if header else []
    for r in rows:
        lines.append(
            f"{r.round:>5}  {r.fault:<22} {r.job:<9} {'yes' if r.survived else 'NO':<8} "
            f"{r.seconds:>5.1f}  {r.at}{'  -- ' + r.error[:400] if r.error else ''}"
        )
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """Per fault: how many injected, how many survived."""
    counts: dict[str, list[int]] = {}
    for r in rows:
        seen = counts.setdefault(r.fault, [0, 0])
        seen[0] += 1
        seen[1] += r.survived
    return "\n".join(
        [f"{'fault':<22} {'injected':>8} {'survived':>8}"]
        + [f"{name:<22} {n:>8} {ok:>8}" for name, (n, ok) in sorted(counts.items())]
    )
