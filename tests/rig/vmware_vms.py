"""Test VMs in the simulated vCenter (tests/rig/vcsim.py), through pyVmomi the
way an operator's tooling would make them, plus the "guest" side: a disk's
data is a real local -flat.vmdk file that a test writes into.

    vm = create_vm(si, "vm1", [(2000, 64 * MiB, SCSI0), (2016, 8 * MiB, SCSI1)], cbt=True)
    fill(flat_file(vc, vm, 2000), [(0, b"boot"), (5 * MiB, b"x" * 4096)])
    snap = create_snapshot(si, vm, "backup-1")
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyVim import task as pyvim_task
from pyVmomi import vim as pyvmomi_vim

from tests.rig.vcsim import Vcsim

# pyVmomi's data object constructors and pyVim's helpers are untyped: the
# vSphere boundary is Any.
vim: Any = pyvmomi_vim
WaitForTask: Any = pyvim_task.WaitForTask

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Scsi:
    """A paravirtual SCSI controller: its device key and bus number."""

    key: int
    bus: int


SCSI0 = Scsi(key=1000, bus=0)
SCSI1 = Scsi(key=1001, bus=1)

DiskSpec = tuple[int, int, Scsi]
"""(device key, capacity in bytes, controller)."""

_PCI_CONTROLLER_KEY = 100  # vcsim's (and ESXi's) virtual PCI controller


def wait(si: Any, task: Any) -> Any:
    """Wait for a task; its result (pyVim raises the task's fault)."""
    WaitForTask(task, si=si)
    return task.info.result


def datacenter(si: Any, name: str = "DC0") -> Any:
    for entity in si.content.rootFolder.childEntity:
        if isinstance(entity, vim.Datacenter) and entity.name == name:
            return entity
    raise LookupError(f"no datacenter {name}")


def _resource_pool(dc: Any) -> Any:
    for entity in dc.hostFolder.childEntity:
        if isinstance(entity, vim.ComputeResource):
            return entity.resourcePool
    raise LookupError("no cluster or host")


def _device_specs(disks: Sequence[DiskSpec], datastore: str) -> list[Any]:
    add = vim.vm.device.VirtualDeviceSpec.Operation.add
    specs: list[Any] = []
    controllers = sorted({c for _, _, c in disks}, key=lambda c: c.bus)
    for c in controllers:
        controller = vim.vm.device.ParaVirtualSCSIController(
            key=c.key,
            busNumber=c.bus,
            controllerKey=_PCI_CONTROLLER_KEY,
            sharedBus=vim.vm.device.VirtualSCSIController.Sharing.noSharing,
        )
        specs.append(vim.vm.device.VirtualDeviceSpec(operation=add, device=controller))
    units: dict[int, int] = {}
    for key, capacity, c in disks:
        unit = units.get(c.key, 0)
        if unit == 7:  # the controller's own unit
            unit += 1
        units[c.key] = unit + 1
        backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[{datastore}]",
            diskMode="persistent",
            thinProvisioned=True,
        )
        disk = vim.vm.device.VirtualDisk(
            key=key,
            controllerKey=c.key,
            unitNumber=unit,
            capacityInBytes=capacity,
            capacityInKB=capacity // KiB,
            backing=backing,
        )
        specs.append(
            vim.vm.device.VirtualDeviceSpec(
                operation=add,
                fileOperation=vim.vm.device.VirtualDeviceSpec.FileOperation.create,
                device=disk,
            )
        )
    return specs


def create_vm(
    si: Any,
    name: str,
    disks: Sequence[DiskSpec],
    *,
    cbt: bool = False,
    power_on: bool = False,
    datastore: str = "LocalDS_0",
    datacenter_name: str = "DC0",
) -> Any:
    """A VM whose thin disks have exactly the given device keys (e.g. 2000,
    2001 on SCSI0 and 2016 on SCSI1); CBT enabled if `cbt`."""
    dc = datacenter(si, datacenter_name)
    spec = vim.vm.ConfigSpec(
        name=name,
        guestId="otherGuest64",
        numCPUs=1,
        memoryMB=64,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=_device_specs(disks, datastore),
        changeTrackingEnabled=cbt,
    )
    vm = wait(si, dc.vmFolder.CreateVM_Task(config=spec, pool=_resource_pool(dc)))
    wanted = sorted(key for key, _, _ in disks)
    got = sorted(virtual_disks(vm.config))
    if got != wanted:
        raise AssertionError(f"vCenter assigned disk keys {got}, wanted {wanted}")
    if power_on:
        wait(si, vm.PowerOnVM_Task())
    return vm


def destroy_vm(si: Any, vm: Any) -> None:
    wait(si, vm.Destroy_Task())


def virtual_disks(config: Any) -> dict[int, Any]:
    """The virtual disks of a VM's or a snapshot's config, by device key."""
    devices: list[Any] = list(config.hardware.device)
    return {int(d.key): d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)}


def disk(vm: Any, key: int) -> Any:
    found = virtual_disks(vm.config)
    if key not in found:
        raise LookupError(f"{vm.name} has no disk {key}")
    return found[key]


_DATASTORE_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.*)$")


def flat_file(vcsim: Vcsim, vm: Any, disk_key: int) -> Path:
    """The local file holding the disk's data, as the simulator keeps it:
    "[LocalDS_0] vm/vm.vmdk" is <datastore dir>/vm/vm-flat.vmdk. It is as long
    as the disk and sparse; writing to it is the guest writing to the disk."""
    match = _DATASTORE_PATH.match(disk(vm, disk_key).backing.fileName)
    if match is None:
        raise ValueError(f"not a datastore path: {disk(vm, disk_key).backing.fileName}")
    relative = match["path"].replace(".vmdk", "-flat.vmdk", 1)
    return vcsim.datastore_dir(match["ds"]) / relative


JOURNAL_SUFFIX = ".sendense-journal"


def journal_path(flat: Path) -> Path:
    """Where `fill` journals the writes to a -flat.vmdk."""
    return flat.with_name(flat.name + JOURNAL_SUFFIX)


def fill(path: Path, writes: Iterable[tuple[int, bytes | memoryview]]) -> None:
    """Write `data` at `offset` for each pair, leaving everything else as it
    is (holes stay holes), and journal the ranges written.

    With the journal the simulator's CBT digests only what changed at the next
    snapshot instead of the whole disk (tests/rig/vcsim/overlay/
    sendense_cbt_journal.go). It trusts the journal only when the file's mtime
    says nothing else wrote: so the mtime is set a second into the past here,
    and any other write (a plain open() in a test) moves it to the present.
    Nothing else may write the file while this runs."""
    before = path.stat().st_mtime_ns
    ranges: list[tuple[int, int]] = []
    with path.open("r+b") as f:
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
            if ranges and sum(ranges[-1]) == offset:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + len(data))
            elif data:
                ranges.append((offset, len(data)))
    st = path.stat()
    stamp = time.time_ns() - 1_000_000_000
    if stamp == before:
        stamp -= 1
    os.utime(path, ns=(st.st_atime_ns, stamp))
    line = f"{before} {stamp} {st.st_size} " + ",".join(f"{o}+{n}" for o, n in ranges)
    with journal_path(path).open("a") as journal:
        journal.write(line.rstrip() + "\n")


def set_cbt(si: Any, vm: Any, enabled: bool) -> None:
    wait(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=enabled)))


def reset_cbt(si: Any, vm: Any) -> None:
    """Switch CBT off and on again: every change ID handed out before is void."""
    set_cbt(si, vm, False)
    set_cbt(si, vm, True)


def create_snapshot(
    si: Any, vm: Any, name: str, *, memory: bool = False, quiesce: bool = False
) -> Any:
    return wait(si, vm.CreateSnapshot_Task(name=name, memory=memory, quiesce=quiesce))


def remove_snapshot(si: Any, snapshot: Any) -> None:
    wait(si, snapshot.RemoveSnapshot_Task(removeChildren=False))


def change_id(snapshot: Any, disk_key: int) -> str:
    """The disk's change ID as the snapshot recorded it."""
    found = virtual_disks(snapshot.config)
    if disk_key not in found:
        raise LookupError(f"snapshot has no disk {disk_key}")
    return str(found[disk_key].backing.changeId or "")


def changed_areas(
    vm: Any, snapshot: Any, disk_key: int, change_id: str
) -> tuple[list[tuple[int, int]], int]:
    """All of QueryChangedDiskAreas' (start, length) areas for the disk, looping
    over startOffset as vSphere requires (areas continuing from one answer to
    the next are joined), and how many calls it took."""
    capacity = int(disk(vm, disk_key).capacityInBytes)
    areas: list[tuple[int, int]] = []
    offset, calls = 0, 0
    while offset < capacity:
        info = vm.QueryChangedDiskAreas(
            snapshot=snapshot, deviceKey=disk_key, startOffset=offset, changeId=change_id
        )
        calls += 1
        for area in info.changedArea or []:
            start, length = int(area.start), int(area.length)
            if areas and sum(areas[-1]) == start:  # continues across answers
                areas[-1] = (areas[-1][0], areas[-1][1] + length)
            else:
                areas.append((start, length))
        if info.length <= 0:
            raise AssertionError(f"QueryChangedDiskAreas made no progress at {offset}")
        offset = int(info.startOffset) + int(info.length)
    return areas, calls
