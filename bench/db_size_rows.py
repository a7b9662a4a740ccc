"""Synthetic rows of a large hub for bench/db_size.py: the same rows (ids from one
seed) go into every database it is given, a chunk of VMs at a time.

Each VM has two disks and `points // vms` restore points, one a day up to today
(100 days at the issue's size, past the 60 days housekeeping keeps tasks), each
made by a completed backup task started by its policy's schedule run. Each disk is
a chain: a full every `CHAIN` points, incrementals on it. Within the last `RECENT`
days, every 25th day also has a failed backup before the retry that made the
point, every 4th a verification, and a prune for a VM with a policy; every 17th
VM's last backup (asked for by hand, after its last point) failed. Task logs are
files (`<data_dir>/task-logs/<id>.log`, the format of `TaskLogs.append`), their
lines spread evenly over the finished tasks. A crash's leftovers are made on demand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    Base,
    Job,
    JobState,
    NbdPort,
    PointStatus,
    RestorePoint,
    RestorePointDisk,
    TaskKind,
    Vm,
    VmDisk,
    new_id,
)
from sendense.hub.retention.rules import KeepRules

Rows = dict[type[Base], list[dict[str, Any]]]
EVERY = timedelta(days=1)
# Tasks that nothing refers to (failed backups, verifications, prunes) are made only
# within the days housekeeping keeps (task_retention_days, 60): older ones are gone
# on a live hub. Backups older than that stay, referred to by their points.
RECENT = 55
CHAIN = 14  # points per chain: a full and 13 incrementals
DISKS = (2000, 2001)
GiB = 1 << 30
CHUNK = 50  # VMs per insert
# name -> (rules, max chain length, schedule); a VM's policy by its last digit
POLICIES = {
    "gold": (KeepRules(last=8, daily=14, weekly=8, monthly=12), CHAIN, "0 2 * * *"),
    "silver": (KeepRules(daily=7, weekly=4), CHAIN, "30 2 * * *"),
}
PATTERNS = {"gold": "vm-*[02468]", "silver": "vm-*[15]"}  # the rest: no policy


def policy_of(vm: int) -> str | None:
    digit = vm % 10
    return "gold" if digit % 2 == 0 else "silver" if digit in (1, 5) else None


@dataclass
class Shape:
    vms: int
    points: int
    log_lines: int
    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    seed: int = 18

    @property
    def per_vm(self) -> int:
        return max(1, self.points // self.vms)

    def at(self, slot: int, vm: int = 0) -> datetime:
        """When slot `slot` of VM `vm` ran (VMs a minute apart, the last slot today)."""
        return self.now - EVERY * (self.per_vm - 1 - slot) - timedelta(minutes=20 + vm % 300)

    def recent(self, slot: int) -> bool:
        return slot >= self.per_vm - RECENT


class Ids:
    """Task-id shaped (32 hex digits), the same sequence for the same seed."""

    def __init__(self, seed: object) -> None:
        self._seed, self._n = str(seed), 0

    def __call__(self) -> str:
        self._n += 1
        return hashlib.blake2b(f"{self._seed}/{self._n}".encode(), digest_size=16).hexdigest()


@dataclass
class Fill:
    """What was made: VM ids and names, the finished tasks (which get log lines)."""

    vm_ids: list[str] = field(default_factory=list)
    vm_names: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


def chunks(shape: Shape, owner: str, repo_id: str, fill: Fill) -> Iterator[Rows]:
    """The rows, schedule runs first, then `CHUNK` VMs at a time."""
    new_id = Ids(shape.seed)
    runs: dict[tuple[str, int], str] = {}
    schedule_rows = []
    for name in POLICIES:
        for slot in range(shape.per_vm):
            runs[name, slot] = new_id()
            at = shape.at(slot)
            schedule_rows.append(
                _job(runs[name, slot], None, TaskKind.SCHEDULE, owner, at, JobState.COMPLETE)
                | {"started_by": "schedule", "finished_at": at + timedelta(minutes=20)}
            )
    fill.finished += [r["id"] for r in schedule_rows]
    yield {Job: schedule_rows}
    for first in range(0, shape.vms, CHUNK):
        rows: Rows = {t: [] for t in (Vm, VmDisk, Job, RestorePoint, RestorePointDisk)}
        for vm in range(first, min(first + CHUNK, shape.vms)):
            _vm_rows(shape, vm, new_id, owner, repo_id, runs, rows, fill)
        yield rows


def _job(
    job_id: str, vm_id: str | None, kind: TaskKind, owner: str, at: datetime, state: JobState
) -> dict[str, Any]:
    return {
        "id": job_id,
        "vm_id": vm_id,
        "kind": kind,
        "hub_id": owner,
        "state": state,
        "created_at": at,
        "started_at": at,
        "finished_at": at + timedelta(minutes=4),
        "started_by": "schedule",
        "parent_id": None,
    }


def _vm_rows(
    shape: Shape,
    vm: int,
    new_id: Ids,
    owner: str,
    repo_id: str,
    runs: dict[tuple[str, int], str],
    rows: Rows,
    fill: Fill,
) -> None:
    vm_id, name, policy = new_id(), f"vm-{vm:05d}", policy_of(vm)
    fill.vm_ids.append(vm_id)
    fill.vm_names.append(name)
    rows[Vm].append(
        {"id": vm_id, "name": name, "vmware_uuid": new_id(), "created_at": shape.at(0, vm)}
    )
    rows[VmDisk] += [
        {
            "vm_id": vm_id,
            "disk_key": k,
            "label": f"Hard disk {k - 1999}",
            "capacity_bytes": 64 * GiB,
        }
        for k in DISKS
    ]
    parents: dict[int, str | None] = dict.fromkeys(DISKS)
    for slot in range(shape.per_vm):
        at = shape.at(slot, vm)
        parent_run = runs[policy, slot] if policy else None
        if slot % 25 == 12 and shape.recent(slot):
            failed = _job(new_id(), vm_id, TaskKind.BACKUP, owner, at, JobState.FAILED)
            failed |= {"error": "the node did not answer", "error_code": "node_unreachable"}
            rows[Job].append(failed | {"parent_id": parent_run, "backup_type": "auto"})
            fill.finished.append(failed["id"])
            at += timedelta(minutes=30)  # the retry made the point
        job = _job(new_id(), vm_id, TaskKind.BACKUP, owner, at, JobState.COMPLETE)
        rows[Job].append(job | {"parent_id": parent_run, "backup_type": "auto"})
        fill.finished.append(job["id"])
        point = new_id()
        rows[RestorePoint].append(
            {
                "id": point,
                "vm_id": vm_id,
                "job_id": job["id"],
                "repository_id": repo_id,
                "status": PointStatus.COMPLETE,
                "created_at": at,
                "completed_at": at + timedelta(minutes=4),
                "protected": vm % 50 == 0 and slot == 0,
                "verified_at": at + timedelta(hours=1) if slot % 4 == 0 else None,
            }
        )
        for key in DISKS:
            full = slot % CHAIN == 0
            disk = new_id()
            rows[RestorePointDisk].append(
                {
                    "id": disk,
                    "restore_point_id": point,
                    "disk_key": key,
                    "parent_id": None if full else parents[key],
                    "file_path": f"{vm_id}/{key}/{disk}.qcow2",
                    "backup_type": "full" if full else "incremental",
                    "virtual_size": 64 * GiB,
                    "data_bytes": 20 * GiB if full else GiB // 2,
                    "file_size": 20 * GiB if full else GiB // 2,
                    "change_id": f"52 {slot}/{key}",
                    "checksum": hashlib.sha256(disk.encode()).hexdigest(),
                    "duration_s": 600.0 if full else 30.0,
                    "rate_bytes_per_s": 35e6,
                    "status": PointStatus.COMPLETE,
                    "checksum_block": 4 << 20,
                }
            )
            parents[key] = disk
        for kind, due in ((TaskKind.VERIFY, 1), (TaskKind.PRUNE, 2)):
            if slot % 4 == due and shape.recent(slot) and (kind == TaskKind.VERIFY or policy):
                extra = _job(new_id(), vm_id, kind, owner, at + EVERY / 2, JobState.COMPLETE)
                rows[Job].append(extra)
                fill.finished.append(extra["id"])
    if vm % 17 == 0:  # a backup asked for by hand a few minutes ago failed
        at = shape.now - timedelta(minutes=10)
        failed = _job(new_id(), vm_id, TaskKind.BACKUP, owner, at, JobState.FAILED)
        failed |= {"error": "the node did not answer", "started_by": "user:admin"}
        rows[Job].append(failed | {"backup_type": "auto", "error_code": "node_unreachable"})
        fill.finished.append(failed["id"])


def insert_rows(db: Database, rows: Rows, counts: dict[str, int]) -> None:
    with db.session() as s:
        for table, values in rows.items():
            if values:
                s.execute(insert(table), values)
                name = str(table.__tablename__)
                counts[name] = counts.get(name, 0) + len(values)


def log_files(shape: Shape, finished: list[str]) -> Iterator[tuple[str, bytes]]:
    """Each finished task's log, `shape.log_lines` lines in all."""
    each, extra = divmod(shape.log_lines, max(1, len(finished)))
    when = shape.now.isoformat()
    for n, task_id in enumerate(finished):
        count = each + (n < extra)
        lines = [
            f"{when} {'WARNING' if i % 9 == 8 else 'INFO'} {'node' if i % 2 else 'hub'} "
            f"step {i + 1} of the task: read 512 MiB of disk 2000 at 35 MB/s\n"
            for i in range(count)
        ]
        yield task_id, "".join(lines).encode()


def write_logs(directories: list[Path], shape: Shape, finished: list[str]) -> int:
    for directory in directories:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = 0
    for task_id, content in log_files(shape, finished):
        for directory in directories:
            (directory / f"{task_id}.log").write_bytes(content)
        written += content.count(b"\n")
    return written


def crash_leftovers(db: Database, repo_id: str, fill: Fill, count: int) -> None:
    """What a hub killed during `count` backups leaves: running tasks (the hub's:
    the database stamps its id) locking their VMs, an incomplete point each (no
    files), two NBD ports each."""
    with db.session() as s:
        for n in range(count):
            vm_id, job_id, point_id = fill.vm_ids[n * 7 % len(fill.vm_ids)], new_id(), new_id()
            s.add(Job(id=job_id, vm_id=vm_id, state=JobState.RUNNING, backup_type="auto"))
            s.add(RestorePoint(id=point_id, vm_id=vm_id, job_id=job_id, repository_id=repo_id))
            s.add_all(
                RestorePointDisk(
                    restore_point_id=point_id,
                    disk_key=key,
                    file_path=f"{vm_id}/{key}/{point_id}.qcow2",
                    backup_type="incremental",
                    virtual_size=64 * GiB,
                )
                for key in DISKS
            )
            s.add_all(
                NbdPort(port=10100 + 2 * n + i, job_id=job_id, disk_key=key, owner=f"job:{job_id}")
                for i, key in enumerate(DISKS)
            )
            s.flush()
            s.execute(update(Vm).where(Vm.id == vm_id).values(active_job_id=job_id))
