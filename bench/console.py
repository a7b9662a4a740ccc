"""The console's dashboard rendered by the hub for a large site.

    .venv/bin/python bench/console.py [--vms 1000] [--points 100000] [--runs 7]

A hub (its services in this process, SQLite) is given synthetic rows: `--vms` VMs,
each with a backup task and a restore point (of one disk) every 6 hours, `--points` in
all, a policy with a schedule matching half of the VMs, and a repository. The
dashboard is then asked for through the hub's own app (the whole ASGI stack: the
session cookie, the page's queries and the template), `--runs` times after one
warm-up. Writes "console" (median and slowest milliseconds, the page's size) and
the top-level `console_dashboard_ms` to bench/results.json: an absolute figure,
as no other console can run beside it. Target: under 300 ms, page under 200 KB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient
from results import record
from sqlalchemy import insert

from sendense.common.config import load_settings
from sendense.hub.api.app import create_app
from sendense.hub.auth.cookies import COOKIE
from sendense.hub.auth.roles import Role
from sendense.hub.config import HubSettings
from sendense.hub.db.models import (
    Job,
    JobState,
    PointStatus,
    RestorePoint,
    RestorePointDisk,
    TaskKind,
    Vm,
)
from sendense.hub.retention.rules import KeepRules
from sendense.hub.service import Hub


def ids(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


def fill(hub: Hub, repo_id: str, vms: int, points: int) -> None:
    per_vm = max(1, points // vms)
    now = datetime.now(UTC)
    vm_ids = ids(vms)
    with hub.db.session() as s:
        s.execute(insert(Vm), [{"id": v, "name": f"vm-{n:05d}"} for n, v in enumerate(vm_ids)])
        for n, vm_id in enumerate(vm_ids):
            jobs, rows, disks = [], [], []
            parent = None
            for day in range(per_vm):
                at = now - timedelta(hours=6 * (per_vm - day), minutes=n % 300)
                job, point, disk = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
                failed = n % 17 == 0 and day == per_vm - 1
                jobs.append(
                    {
                        "id": job,
                        "vm_id": vm_id,
                        "kind": TaskKind.BACKUP,
                        "state": JobState.FAILED if failed else JobState.COMPLETE,
                        "error": "the node did not answer" if failed else None,
                        "created_at": at,
                        "started_at": at,
                        "finished_at": at + timedelta(minutes=3),
                    }
                )
                rows.append(
                    {
                        "id": point,
                        "vm_id": vm_id,
                        "job_id": job,
                        "repository_id": repo_id,
                        "status": PointStatus.COMPLETE,
                        "created_at": at,
                        "completed_at": at + timedelta(minutes=3),
                    }
                )
                disks.append(
                    {
                        "id": disk,
                        "restore_point_id": point,
                        "disk_key": 2000,
                        "parent_id": parent,
                        "file_path": f"{vm_id}/{disk}.qcow2",
                        "backup_type": "full" if parent is None else "incremental",
                        "virtual_size": 1 << 34,
                        "data_bytes": 1 << 28,
                        "file_size": 1 << 28,
                        "status": PointStatus.COMPLETE,
                    }
                )
                parent = disk
            s.execute(insert(Job), jobs)
            s.execute(insert(RestorePoint), rows)
            s.execute(insert(RestorePointDisk), disks)
    hub.policies.create("nightly", KeepRules(daily=14, weekly=8), None, "0 22 * * *")
    hub.policies.assign("nightly", "pattern", "vm-0*[02468]")
    hub.policies.mark_run("nightly", now)  # nothing missed: the hub starts no backup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sendense-bench-console-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        repo.mkdir()
        settings = load_settings(
            HubSettings,
            data_dir=root / "data",
            database_url=f"sqlite:///{root / 'hub.db'}",
            repository_roots=[root],
            min_free_bytes=0,
        )
        hub = Hub.open(settings)
        try:
            repo_id = hub.repos.add(str(repo)).id
            started = time.monotonic()
            fill(hub, repo_id, args.vms, args.points)
            filled_s = time.monotonic() - started
            hub.users.create("bench", Role.VIEWER, "bench password 123")
            _, _, secret = hub.users.login("bench", "bench password 123", None)
            with TestClient(create_app(hub), cookies={COOKIE: secret}) as client:
                first = client.get("/")
                assert first.status_code == 200, first.text[:500]
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    page = client.get("/")
                    times.append((time.perf_counter() - t0) * 1000)
                    assert page.status_code == 200
        finally:
            hub.close()
    size = len(page.content)
    figures = {
        "vms": args.vms,
        "points": args.points,
        "fill_s": round(filled_s, 1),
        "median_ms": round(statistics.median(times), 1),
        "slowest_ms": round(max(times), 1),
        "page_bytes": size,
        "targets": {"ms": 300, "page_bytes": 200_000},
    }
    print(figures)
    record("console", figures, {"console_dashboard_ms": statistics.median(times)})


if __name__ == "__main__":
    main()
