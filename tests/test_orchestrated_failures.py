"""What a backup product must survive: the node or the hub killed mid-backup, and a
repository that fills up. Nothing is marked complete unless whole; the next job works."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sendense.common.contract import ACTIVE_STATES
from sendense.nbd.qemu_img import QemuImg
from tests.rig.node_tasks import snapshot_names, unique
from tests.rig.procs import pids_with, wait_gone
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file

SLOW = {"chunk_mib": "1", "readers_per_disk": "1", "writes_in_flight": "1"}


@pytest.fixture
def slow_site(tmp_path: Path, vcsim: Vcsim) -> Iterator[Site]:
    site = Site(tmp_path, hub_settings={"node_timeout_s": "5", "snapshot_sweep_s": "1"}, **SLOW)
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        yield site
    finally:
        site.stop()


def big_vm(si: Any, vcsim: Vcsim, mib: int = 192) -> tuple[str, Any]:
    name = unique("crash")
    vm = create_vm(si, name, [(2000, mib * MiB, SCSI0), (2001, 16 * MiB, SCSI0)], cbt=True)
    fill(flat_file(vcsim, vm, 2000), [(o * MiB, bytes([o % 250 + 1]) * MiB) for o in range(mib)])
    fill(flat_file(vcsim, vm, 2001), [(MiB, b"\x09" * MiB)])
    return name, vm


def complete_points(site: Site, vm_name: str) -> list[dict[str, Any]]:
    """A failed job's point may still be going away (its job is marked failed first,
    then its files and rows are removed): only complete points count."""
    points: list[dict[str, Any]] = site.api.get(f"/api/v1/restore-points?vm={vm_name}").json()
    return [p for p in points if p["status"] == "complete"]


def wait_copying(site: Site, job_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        progress = site.api.get(f"/api/v1/jobs/{job_id}/progress")
        if progress.status_code == 200 and any(
            d["bytes_done"] > 0 for d in progress.json()["disks"]
        ):
            return
        assert time.monotonic() < deadline, "the copy never started"
        time.sleep(0.1)


def test_node_killed_mid_backup_fails_the_job_and_the_next_one_heals(
    slow_site: Site, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    site = slow_site
    site.api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    name, vm = big_vm(si, vcsim)
    first = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
    assert site.wait_job(first)["state"] == "complete"
    fill(flat_file(vcsim, vm, 2000), [(5 * MiB, b"\xfe" * MiB)])

    # a full: slow enough (1 MiB at a time) to be caught in the middle
    second = site.api.post("/api/v1/backups", json={"vm": name, "type": "full"}).json()["job_id"]
    wait_copying(site, second)
    assert site.node.serve is not None
    site.node.serve.send_signal(signal.SIGKILL)
    site.node.serve.wait()
    job = site.wait_job(second, timeout=60)
    assert job["state"] == "failed"
    assert "answer" in job["error"]
    points = complete_points(site, name)
    assert len(points) == 1
    assert points[0]["job_id"] == first
    assert pids_with(str(repo_dir)) == [] or wait_gone(pids_with(str(repo_dir))) == []
    assert any(n.startswith("sendense-") for n in snapshot_names(vm))  # the crash left it

    site.node.start_serve()
    third = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
    assert site.wait_job(third)["state"] == "complete"
    assert snapshot_names(vm) == []
    points = complete_points(site, name)
    assert [p["job_id"] for p in points] == [first, third]
    parents = {d["id"] for d in points[0]["disks"]}
    for disk in points[1]["disks"]:
        assert disk["parent_id"] in parents
        assert QemuImg().compare(
            flat_file(vcsim, vm, disk["disk_key"]), repo_dir / disk["file_path"], "raw", "qcow2"
        )


def test_a_backup_the_hub_fails_is_cancelled_on_the_node(
    slow_site: Site, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    site = slow_site
    site.api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    name, vm = big_vm(si, vcsim)
    job_id = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
    wait_copying(site, job_id)
    stopped = site.api.post(
        f"/api/v1/jobs/{job_id}/finish", json={"success": False, "error": "operator stopped it"}
    )
    assert stopped.status_code == 200, stopped.text
    assert site.wait_job(job_id)["error"] == "operator stopped it"
    with site.node_api() as node:
        deadline = time.monotonic() + 30
        while (state := node.get(f"/api/v1/jobs/{job_id}").json()["state"]) == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    # Told by the hub, not failed by its next write to a closed export.
    assert state == "cancelled"
    assert snapshot_names(vm) == []
    assert complete_points(site, name) == []
    assert site.api.get("/api/v1/ports").json()["used"] == 0


def test_a_node_killed_mid_backup_removes_its_snapshot_once_restarted(
    slow_site: Site, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    """No backup needs to come: the hub hands the restarted node its vCenter's
    login, and the node's snapshot hunter removes what its dead job left."""
    site = slow_site
    site.api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    name, vm = big_vm(si, vcsim)
    job_id = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
    wait_copying(site, job_id)
    assert site.node.serve is not None
    site.node.serve.send_signal(signal.SIGKILL)
    site.node.serve.wait()
    assert site.wait_job(job_id, timeout=60)["state"] == "failed"
    assert any(n.startswith("sendense-") for n in snapshot_names(vm))  # the crash left it

    site.node.start_serve()
    deadline = time.monotonic() + 60
    while snapshot_names(vm):
        assert time.monotonic() < deadline, "the snapshot outlived the node's restart"
        time.sleep(0.5)
    jobs = site.api.get("/api/v1/jobs").json()
    assert [
        j["id"] for j in jobs if j["vm_id"] == site.api.get(f"/api/v1/vms/{name}").json()["id"]
    ] == [job_id]


def test_hub_killed_mid_backup_cleans_up_at_restart(
    slow_site: Site, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    site = slow_site
    site.api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    name, vm = big_vm(si, vcsim)
    job_id = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
    wait_copying(site, job_id)
    orphans = pids_with(str(repo_dir))
    assert len(orphans) == 2
    site.hub.kill9()
    site.hub.start()
    assert wait_gone(orphans, timeout=10) == []
    job = site.api.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "failed"
    assert "restarted" in job["error"]
    assert site.api.get("/api/v1/ports").json()["used"] == 0
    assert list(repo_dir.rglob("*.qcow2")) == []
    site.node.wait_tunnel("connected", timeout=60)
    deadline = time.monotonic() + 60
    while snapshot_names(vm):  # the node's copy fails on the dead exports and cleans up
        assert time.monotonic() < deadline
        time.sleep(0.2)
    again = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
    assert site.wait_job(again)["state"] == "complete"


@contextlib.contextmanager
def export_paused(node: httpx.Client, job_id: str, repo: Path) -> Iterator[None]:
    """Hold the job's writes mid-copy: once the node has the job (the hub has sized
    its budget, the node still takes its snapshot), stop the hub's qemu-nbd for the
    repository; it goes on when the block ends. A copy that ended first fails here."""
    deadline = time.monotonic() + 60
    while node.get(f"/api/v1/jobs/{job_id}").status_code != 200:
        assert time.monotonic() < deadline, "the node never got the job"
        time.sleep(0.005)
    pids = pids_with(str(repo))
    assert pids, "no export for the job"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        status = node.get(f"/api/v1/jobs/{job_id}").json()
        assert status["state"] in ACTIVE_STATES, status
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def fill_up(directory: Path) -> None:
    """Write a file until the filesystem has no byte left."""
    fd = os.open(directory / "ballast", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (MiB, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\xff" * size):
                    pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(directory).free < 4096


@contextlib.contextmanager
def small_repository(tmp_path: Path, mib: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the repository")
    small = tmp_path / "small-repo"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(small)], check=True)
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=False)


@contextlib.contextmanager
def site_on(tmp_path: Path, vcsim: Vcsim, repo: Path, **node: str) -> Iterator[Site]:
    site = Site(tmp_path / "site", None, repository_roots=tmp_path, **node)
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        assert site.api.post("/api/v1/repositories", json={"path": str(repo)}).status_code == 201
        yield site
    finally:
        site.stop()


def test_a_backup_that_cannot_fit_is_refused_before_it_copies(
    tmp_path: Path, vcsim: Vcsim, si: Any
) -> None:
    with small_repository(tmp_path, 100) as small, site_on(tmp_path, vcsim, small) as site:
        # A full: the disk's allocated bytes (all 128 MiB written here) do not fit
        # in 100 MiB.
        big = unique("big")
        big_vm = create_vm(si, big, [(2000, 128 * MiB, SCSI0)], cbt=True)
        fill(flat_file(vcsim, big_vm, 2000), [(o * MiB, b"\x05" * MiB) for o in range(128)])
        refused = site.api.post("/api/v1/backups", json={"vm": big}).json()["job_id"]
        job = site.wait_job(refused)
        assert job["state"] == "failed"
        assert f"needs {128 * MiB} bytes" in job["error"], job["error"]
        assert snapshot_names(big_vm) == []  # the node was never asked

        # An incremental: its parent's size (8 MiB) fits, the node's plan (96 MiB
        # changed) does not: it fails before the copy, the full stays whole.
        # The full fits although the disk is five times the repository: what it
        # holds counts, not its capacity.
        name = unique("grows")
        vm = create_vm(si, name, [(2000, 512 * MiB, SCSI0)], cbt=True)
        source = flat_file(vcsim, vm, 2000)
        fill(source, [(0, b"\x01" * 8 * MiB)])
        kept = tmp_path / "first.raw"
        shutil.copyfile(source, kept)
        first = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
        assert site.wait_job(first)["state"] == "complete"
        fill(source, [(o * MiB, bytes([o + 2]) * MiB) for o in range(96)])
        second = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
        job = site.wait_job(second)
        assert job["state"] == "failed"
        assert f"the copy needs {96 * MiB} bytes" in job["error"], job["error"]
        assert "nothing was copied" in job["error"]
        points = complete_points(site, name)
        assert [p["job_id"] for p in points] == [first]
        assert QemuImg().compare(kept, small / points[0]["disks"][0]["file_path"], "raw", "qcow2")
        deadline = time.monotonic() + 30  # the failed job's file is removed after its state
        while len(list(small.rglob("*.qcow2"))) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert snapshot_names(vm) == []
        assert site.api.get("/api/v1/ports").json()["used"] == 0


def test_a_repository_that_fills_up_mid_copy_fails_the_job_and_keeps_earlier_points(
    tmp_path: Path, vcsim: Vcsim, si: Any
) -> None:
    with (
        small_repository(tmp_path, 100) as small,
        site_on(tmp_path, vcsim, small, **SLOW) as site,
    ):
        name = unique("full")
        vm = create_vm(si, name, [(2000, 64 * MiB, SCSI0)], cbt=True)
        source = flat_file(vcsim, vm, 2000)
        fill(source, [(0, b"\x01" * 8 * MiB)])
        kept = tmp_path / "first.raw"
        shutil.copyfile(source, kept)
        first = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
        assert site.wait_job(first)["state"] == "complete"

        fill(source, [(o * MiB, bytes([o]) * MiB) for o in range(16, 64)])  # 48 MiB new
        with site.node_api() as node:
            second = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
            with export_paused(node, second, small):
                fill_up(small)  # something else on the repository's filesystem takes what is left
        job = site.wait_job(second)
        assert job["state"] == "failed"
        no_space = ("ENOSPC", os.strerror(errno.ENOSPC))  # the errno's name or its text
        assert any(words in job["error"] for words in no_space), job["error"]
        points = complete_points(site, name)
        assert [p["job_id"] for p in points] == [first]
        image = small / points[0]["disks"][0]["file_path"]
        assert QemuImg().check(image).clean
        assert QemuImg().compare(kept, image, "raw", "qcow2")
        deadline = time.monotonic() + 30  # the failed job's file is removed after its state
        while len(list(small.rglob("*.qcow2"))) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert snapshot_names(vm) == []
