"""One snapshot per job, covering every disk of the VM; removed in every outcome.

A node that crashed leaves `sendense-*` snapshots behind; they are swept before
the next snapshot of the same VM is taken (VMware allows a chain of them, and
each one slows the VM and grows a delta file).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pyVmomi import vim

from sendense.node.vmware.tasks import wait_task

log = logging.getLogger(__name__)
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


def sweep(vm: Any, keep: str | None = None) -> list[str]:
    """Remove leftover Sendense snapshots (never anybody else's)."""
    removed = []
    for name, snap in snapshots_of(vm):
        if name.startswith(PREFIX) and name != keep:
            log.warning("removing leftover snapshot vm=%s snapshot=%s", vm.name, name)
            remove(snap, f"remove leftover snapshot {name}")
            removed.append(name)
    return removed


def create(vm: Any, name: str, quiesce: bool) -> Any:
    task = vm.CreateSnapshot_Task(
        name=name,
        description="Sendense backup; removed when the job ends",
        memory=False,
        quiesce=quiesce,
    )
    return wait_task(task, f"snapshot {name} of {vm.name}")


def remove(snapshot: Any, what: str) -> None:
    wait_task(snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True), what)


def disks_at(snapshot: Any) -> list[Any]:
    """The VirtualDisk devices as the snapshot froze them (their change IDs included)."""
    return [d for d in snapshot.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
