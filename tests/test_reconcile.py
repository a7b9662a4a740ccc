"""Start-up clean-up never touches a complete restore point, on both databases."""

from __future__ import annotations

from pathlib import Path

from sendense.hub.api.queries import Queries
from sendense.hub.backup.disks import DiskResult, DiskSpec
from sendense.hub.repository.repositories import MARKER
from sendense.hub.service import Hub
from tests.rig.procs import pids_with


def test_complete_points_survive_and_incomplete_ones_go(db_hub: Hub, repo_dir: Path) -> None:
    hub = db_hub
    hub.repos.add(str(repo_dir))
    disks = [DiskSpec(2000, 8 << 20), DiskSpec(2016, 4 << 20)]
    first = hub.ledger.prepare("vm1", disks, "full")
    point = hub.ledger.finish(first.job_id, {2000: DiskResult("cid-1"), 2016: DiskResult("c2")})
    kept = {d.file_path for d in Queries(hub.db).restore_point(point).disks}

    second = hub.ledger.prepare("vm1", disks, "auto")
    assert {d.backup_type for d in second.disks} == {"incremental"}
    assert len(pids_with(str(repo_dir))) == 2
    report = hub.reconcile()

    assert report.failed_jobs == 1
    assert pids_with(str(repo_dir)) == []
    assert {str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*.qcow2")} == kept
    points = Queries(hub.db).restore_points("vm1")
    assert [p.id for p in points] == [point]
    assert Queries(hub.db).job(second.job_id).state == "failed"
    assert hub.ports.status().used == 0
    third = hub.ledger.prepare("vm1", disks, "auto")
    assert {d.backup_type for d in third.disks} == {"incremental"}


def test_a_dead_jobs_point_on_an_unmounted_repository_waits_for_it(
    db_hub: Hub, repo_dir: Path
) -> None:
    """Its files cannot be removed while the share is away: its rows stay, so that a
    start-up with the share back removes both (no file is left without a row)."""
    hub = db_hub
    hub.repos.add(str(repo_dir))
    job = hub.ledger.prepare("vm1", [DiskSpec(2000, 8 << 20)], "full")
    files = {str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*.qcow2")}
    assert len(files) == 1
    marker = repo_dir / MARKER
    saved = marker.read_text()
    marker.unlink()  # what an unmounted share shows: no marker

    report = hub.reconcile()
    assert report.failed_jobs == 1
    assert Queries(hub.db).job(job.job_id).state == "failed"
    assert [p.status for p in Queries(hub.db).restore_points("vm1")] == ["incomplete"]
    assert hub.ports.status().used == 0

    marker.write_text(saved)  # mounted again
    assert hub.reconcile().removed_points == 1
    assert Queries(hub.db).restore_points("vm1") == []
    assert list(repo_dir.rglob("*.qcow2")) == []
