"""One snapshot per job, covering every disk of the VM; removed in every outcome.

A node that crashed leaves its job's snapshot behind; the node recorded it before
making it (`sendense.node.snapshot_hunter`) and removes it later. A snapshot the
node did not record (a user's, even named `sendense-*`, another node's) is never
touched here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyVmomi import vim

from sendense.node.vmware.tasks import wait_task

PREFIX = "sendense-"


def snapshot_name(job_id: str) -> str:
    return f"{PREFIX}{job_id}"


def _walk(trees: list[Any] | None) -> Iterator[Any]:
    for tree in trees or []:
        yield tree
        yield from _walk(tree.childSnapshotList)


def snapshots_of(vm: Any) -> list[tuple[str, Any]]:
    """(name, snapshot) for every snapshot of the VM."""
    info = vm.snapshot
    if info is None:
        return []
    return [(t.name, t.snapshot) for t in _walk(info.rootSnapshotList)]


def named(vm: Any, name: str) -> Any | None:
    """The VM's snapshot of that name, or None."""
    for found, snap in snapshots_of(vm):
        if found == name:
            return snap
    return None


def create(vm: Any, name: str, quiesce: bool) -> Any:
    task = vm.CreateSnapshot_Task(
        name=name,
        description="Sendense backup; removed when the job ends",
        memory=False,
        quiesce=quiesce,
    )
    return wait_task(task, f"snapshot {name} of {vm.name}")


def remove(snapshot: Any, what: str, timeout: float) -> None:
    """Remove one snapshot, its data consolidated into the disks: on a VM that wrote
    a lot since the snapshot this takes long, so the caller gives its own deadline."""
    task = snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True)
    wait_task(task, what, timeout)


def disks_at(snapshot: Any) -> list[Any]:
    """The VirtualDisk devices as the snapshot froze them (their change IDs included)."""
    return [d for d in snapshot.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
