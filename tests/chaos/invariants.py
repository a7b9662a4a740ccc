"""What must hold after every fault and restart. Each check waits (bounded) for the
hub to settle, then names what it found wrong."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from sendense.hub.repository.repositories import MARKER
from tests.chaos.processes import stray_ssh, stray_sshd
from tests.chaos.world import REPO, World
from tests.rig.procs import pids_with

SETTLE_S = 60.0
SNAPSHOT_S = 60.0


def eventually(what: str, probe: Callable[[], object], timeout: float = SETTLE_S) -> None:
    """`probe` returns something falsy once the hub has settled; else what is wrong."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if not found:
            return
        assert time.monotonic() < deadline, f"{what}: {found}"
        time.sleep(0.2)


def settled(world: World) -> None:
    """No task runs, no incomplete point or merge step is left, the port pool is
    whole, and no qemu-nbd, ssh or sshd of a finished job runs."""
    active = "('queued','preparing','running','finalizing')"
    eventually(
        "tasks still active",
        lambda: world.sql(f"SELECT id, kind, state FROM jobs WHERE state IN {active}"),
    )
    eventually(
        "incomplete restore points left",
        lambda: world.sql("SELECT id, job_id FROM restore_points WHERE status = 'incomplete'"),
    )
    eventually("merge steps left", lambda: world.sql("SELECT id, state, error FROM merges"))
    eventually("ports still allocated", lambda: world.sql("SELECT port, owner FROM nbd_ports"))
    eventually("export rows left", lambda: world.sql("SELECT id, port, pid FROM nbd_exports"))
    pool = world.site.api.get("/api/v1/ports").json()
    assert pool["used"] == 0, pool
    assert pool["free"] == pool["total"], pool
    roots = (str(world.storage.repo), str(world.storage.store), str(world.site.hub.data_dir))
    eventually("qemu-nbd left running", lambda: [p for r in roots for p in pids_with(r)])
    world.site.node.wait_tunnel("connected", timeout=SETTLE_S)
    eventually("ssh of an earlier tunnel left", lambda: stray_ssh(world.site))
    eventually("sshd sessions of a stopped sshd left", lambda: stray_sshd(world.site))


def repository_clean(world: World) -> None:
    """The repository holds exactly the layers' files, and `repo check` agrees."""
    check = world.site.api.post(f"/api/v1/repositories/{REPO}/check", json={"repair": False})
    assert check.status_code == 200, check.text
    assert check.json()["clean"], check.json()["findings"]
    layers = {row[0] for row in world.sql("SELECT file_path FROM restore_point_disks")}
    repo = world.storage.repo
    files = {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()}
    assert files - {MARKER} == layers, (sorted(files - layers - {MARKER}), sorted(layers - files))


def points_restore(world: World) -> None:
    """Every complete point verifies and reads as its source did, and no other point
    is listed."""
    points = world.points()
    statuses = {p["id"]: p["status"] for p in points}
    assert set(statuses) == set(world.expected), (statuses, sorted(world.expected))
    assert all(s == "complete" for s in statuses.values()), statuses
    if not points:
        return
    queued = world.site.api.post("/api/v1/verify", json={"target": world.name})
    assert queued.status_code == 202, queued.text
    task = world.site.wait_job(queued.json()["job_id"], timeout=300)
    assert task["state"] == "complete", task
    assert not task["error"], task
    for point in world.points():
        assert point["status"] == "complete", point
        assert not point["verify_error"], point
        for disk in point["disks"]:
            got = download_digest(world, point["id"], disk["disk_key"])
            want = world.expected[point["id"]][disk["disk_key"]]
            assert got == want, f"point {point['id']} disk {disk['disk_key']} reads otherwise"


def download_digest(world: World, point_id: str, disk_key: int) -> str:
    digest = hashlib.sha256()
    url = f"/api/v1/restore-points/{point_id}/disks/{disk_key}/download?format=raw"
    with world.site.api.stream("GET", url) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes():
            digest.update(chunk)
    return digest.hexdigest()


def no_snapshot(world: World) -> None:
    eventually("snapshots left in vCenter", world.snapshots, timeout=SNAPSHOT_S)


def check_all(world: World) -> None:
    settled(world)
    repository_clean(world)
    points_restore(world)
