"""Many backups on one node, as processes (hub, node, tunnel, vcsim): the hub
runs one at a time on the node (its per-node limit), the node one disk stream at
a time (its memory budget) at its bandwidth limit; every backup completes, its
log says what it waited for."""

from __future__ import annotations

import itertools
import random
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.rig.node_tasks import unique
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, create_vm, fill, flat_file

MiB = 1 << 20
SIZE = 24 * MiB
VMS = 3
LIMIT_MB_S = 40.0
CHUNK = 4 * MiB


def log_of(site: Site, task_id: str) -> list[str]:
    lines = site.api.get(f"/api/v1/tasks/{task_id}/log").json()["lines"]
    return [line["message"] for line in lines]


def interval(task: dict[str, Any]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(task["started_at"]), datetime.fromisoformat(task["finished_at"])


def test_a_nodes_limits_hold_and_every_backup_completes(
    tmp_path: Path, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    site = Site(
        tmp_path,
        {"max_jobs": "4", "max_jobs_per_node": "1"},
        memory_budget_mib="16",  # less than one stream's 64 MiB: one stream at a time
        bandwidth_mb_s=str(LIMIT_MB_S),
    )
    rng = random.Random(18)
    try:
        site.start()
        site.prepare(vcsim, repo_dir)
        names = [unique("limits") for _ in range(VMS)]
        for name in names:
            vm = create_vm(si, name, [(2000, SIZE, SCSI0), (2001, SIZE, SCSI0)], cbt=True)
            for key in (2000, 2001):
                fill(flat_file(vcsim, vm, key), [(0, rng.randbytes(SIZE))])
        ids = [site.api.post("/api/v1/backups", json={"vm": n}).json()["job_id"] for n in names]
        jobs = [site.wait_job(job_id, timeout=180) for job_id in ids]
        tasks = [site.api.get(f"/api/v1/tasks/{job_id}").json() for job_id in ids]
        logs = {job_id: log_of(site, job_id) for job_id in ids}
        points = [site.api.get(f"/api/v1/restore-points?vm={n}").json() for n in names]
    finally:
        site.stop()
    assert [j["state"] for j in jobs] == ["complete"] * VMS, jobs
    spans = sorted(interval(t) for t in tasks)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two backups ran on the node at once: {spans}"
    waited = [i for i in ids if any("waits: node " in m for m in logs[i])]
    assert len(waited) == VMS - 1, logs
    # Two disks, room for one stream: one of them waited in every backup.
    for job_id in ids:
        budget = [m for m in logs[job_id] if "waits for the node's memory budget" in m]
        assert len(budget) == 1, logs[job_id]
    for (point,) in points:
        assert point["status"] == "complete"
        for disk in point["disks"]:
            seconds = SIZE / disk["rate_bytes_per_s"]
            # The first request goes at once, then LIMIT_MB_S at most.
            assert (SIZE - CHUNK) / seconds <= LIMIT_MB_S * 1e6, disk
