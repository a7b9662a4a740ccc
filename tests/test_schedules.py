"""A schedule runs backups on its own, through the real hub process, node and tunnel;
a run missed while the hub was down runs once at start-up, then prune follows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from sendense.hub.db.models import Policy
from sendense.nbd.qemu_img import QemuImg
from tests.rig.cli import sendense
from tests.rig.node_tasks import unique
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file


def jobs_of(site: Site, kind: str) -> list[dict[str, Any]]:
    return [j for j in site.api.get("/api/v1/jobs").json() if j["kind"] == kind]


def test_missed_schedule_runs_once_at_start_up_then_prunes(
    tmp_path: Path, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    site = Site(tmp_path, hub_settings={"schedule_tick_s": "0.5"})
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        site.api.post("/api/v1/repositories", json={"path": str(repo_dir)})
        name = unique("sched")
        vm = create_vm(si, name, [(2000, 16 * MiB, SCSI0)], cbt=True)
        fill(flat_file(vcsim, vm, 2000), [(MiB, b"\x5a" * MiB)])
        done = sendense("backup", "run", name, "--watch", env=site.cli_env())
        assert done.returncode == 0, done.stderr
        added = sendense(
            "policy",
            "add",
            "yearly",
            "--keep-last",
            "1",
            "--schedule",
            # Once a year: no new slot can come while the test runs (a schedule of
            # every two minutes did, when a minute turned), so the count below is
            # exact whatever the wall clock says.
            "0 0 1 1 *",
            env=site.cli_env(),
        )
        assert added.returncode == 0, added.stderr
        assigned = sendense("policy", "assign", "yearly", "--vm", name, env=site.cli_env())
        assert assigned.returncode == 0, assigned.stderr

        site.hub.stop()
        hub = site.hub_service()
        try:  # the hub was down for three years: three slots went by
            with hub.db.session() as s:
                s.execute(
                    update(Policy).values(
                        last_run_at=datetime.now(UTC) - timedelta(days=3 * 366),
                        created_at=datetime.now(UTC) - timedelta(days=4 * 366),
                    )
                )
        finally:
            hub.db.dispose()
        fill(flat_file(vcsim, vm, 2000), [(5 * MiB, b"\xa5" * MiB)])
        site.hub.start()
        site.node.wait_tunnel("connected", timeout=60)

        deadline = time.monotonic() + 90
        while not any(
            j["kind"] == "prune" and j["state"] == "complete"
            for j in site.api.get("/api/v1/jobs").json()
        ):
            assert time.monotonic() < deadline, site.api.get("/api/v1/jobs").json()
            time.sleep(0.5)
        backups = jobs_of(site, "backup")
        assert [j["state"] for j in backups] == ["complete", "complete"]  # one run, not three
        points = site.api.get(f"/api/v1/restore-points?vm={name}").json()
        assert len(points) == 1  # keep-last=1: the scheduled backup's point
        assert points[0]["job_id"] == backups[0]["id"]  # newest first
        # The run is a task of its own, the parent of the backup it started.
        while True:  # it ends once its prunes have
            runs = site.api.get("/api/v1/tasks", params={"kind": "schedule"}).json()["items"]
            if runs and runs[0]["state"] != "running":
                break
            assert time.monotonic() < deadline, runs
            time.sleep(0.2)
        assert [r["state"] for r in runs] == ["complete"]
        assert runs[0]["vm"] is None
        assert runs[0]["started_by"] == "schedule"
        scheduled = site.api.get(f"/api/v1/tasks/{backups[0]['id']}").json()
        assert scheduled["parent_id"] == runs[0]["id"]
        assert scheduled["started_by"] == "schedule"
        pruned = site.api.get("/api/v1/tasks", params={"kind": "prune"}).json()["items"]
        assert [p["parent_id"] for p in pruned] == [runs[0]["id"]]
        by_hand = site.api.get(f"/api/v1/tasks/{backups[1]['id']}").json()
        assert by_hand["parent_id"] is None
        assert by_hand["started_by"].startswith("token:")
        image = repo_dir / points[0]["disks"][0]["file_path"]
        assert QemuImg().compare(flat_file(vcsim, vm, 2000), image, "raw", "qcow2")
        plan = sendense("prune", name, "--dry-run", env=site.cli_env())
        assert plan.returncode == 0, plan.stderr
        assert "keep-last" in plan.stdout
        assert "newest" not in plan.stdout  # keep-last already keeps it
        listed = sendense("schedules", "list", env=site.cli_env())
        assert listed.returncode == 0
        assert "yearly" in listed.stdout
    finally:
        site.stop()
