"""VMs and their disks, with the real VirtualDisk.key (2000, 2016, 16000, 31000...)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from sendense.common.contract import ControllerInventory, DiskInventory, VmInventory
from sendense.common.errors import NotFound
from sendense.node.vmware.connection import Vcenter, VcenterError
from sendense.node.vmware.tasks import wait_task

_PC = vmodl.query.PropertyCollector
log = logging.getLogger(__name__)


def _all_vms(vc: Vcenter) -> list[tuple[Any, str]]:
    """(vm, name) for every VM, in one property-collector round trip."""
    content = vc.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = _PC.FilterSpec(
            objectSet=[
                _PC.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        _PC.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[_PC.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
        )
        result = content.propertyCollector.RetrieveContents([spec]) or []
    finally:
        view.Destroy()
    return [(obj.obj, obj.propSet[0].val) for obj in result if obj.propSet]


def vms_named(vc: Vcenter, name: str) -> list[Any]:
    return [vm for vm, found in _all_vms(vc) if found == name]


def find_vm(vc: Vcenter, ref: str) -> Any:
    """By inventory path (`DC0/vm/pgtest1`) when it holds a '/', else by name."""
    if "/" in ref:
        found = vc.content.searchIndex.FindByInventoryPath(ref)
        if isinstance(found, vim.VirtualMachine):
            return found
        raise NotFound(f"no VM at inventory path {ref!r}")
    matches = vms_named(vc, ref)
    if not matches:
        raise NotFound(f"vCenter has no VM named {ref!r}")
    if len(matches) > 1:
        raise VcenterError(f"{len(matches)} VMs are named {ref!r}: use the inventory path")
    return matches[0]


def datacenter_of(entity: Any) -> Any:
    node = entity
    while node is not None and not isinstance(node, vim.Datacenter):
        node = node.parent
    if node is None:
        raise VcenterError("VM is not inside a datacenter")
    return node


def inventory_path(entity: Any) -> str:
    """`DC0/vm/folder/name`: the root folder (the only entity without a parent) is left out."""
    parts = []
    node = entity
    while node is not None and node.parent is not None:
        parts.append(node.name)
        node = node.parent
    return "/".join(reversed(parts))


def virtual_disks(devices: list[Any]) -> list[DiskInventory]:
    disks = []
    for dev in devices:
        if isinstance(dev, vim.vm.device.VirtualDisk):
            backing = dev.backing
            disks.append(
                DiskInventory(
                    key=dev.key,
                    label=dev.deviceInfo.label if dev.deviceInfo else f"disk {dev.key}",
                    controller_key=dev.controllerKey,
                    unit_number=dev.unitNumber,
                    capacity_bytes=dev.capacityInBytes or dev.capacityInKB * 1024,
                    datastore_path=getattr(backing, "fileName", ""),
                    change_id=getattr(backing, "changeId", None) or None,
                    thin_provisioned=getattr(backing, "thinProvisioned", None),
                )
            )
    return sorted(disks, key=lambda d: d.key)


# The controllers a disk can hang on, by the short name of their vSphere class.
STORAGE_CONTROLLERS = (
    "ParaVirtualSCSIController",
    "VirtualLsiLogicController",
    "VirtualLsiLogicSASController",
    "VirtualBusLogicController",
    "VirtualAHCIController",
    "VirtualNVMEController",
    "VirtualIDEController",
)


def controller_type(device: Any) -> str | None:
    for name in STORAGE_CONTROLLERS:
        if isinstance(device, getattr(vim.vm.device, name)):
            return name
    return None


def controllers(devices: list[Any]) -> list[ControllerInventory]:
    found = []
    for dev in devices:
        kind = controller_type(dev)
        if kind is not None:
            shared = getattr(dev, "sharedBus", None)
            found.append(
                ControllerInventory(
                    key=dev.key,
                    type=kind,
                    bus_number=dev.busNumber,
                    shared_bus=str(shared) if shared else None,
                )
            )
    return sorted(found, key=lambda c: c.key)


def allocated_bytes(layout: Any) -> dict[int, int]:
    """Per disk key, the bytes its extent files take on the datastore (every file of
    its chain: snapshots' deltas included), from the VM's `layoutEx`."""
    if layout is None:
        return {}
    extents = {f.key: f.size or 0 for f in layout.file or [] if f.type == "diskExtent"}
    return {
        disk.key: sum(extents.get(key, 0) for unit in disk.chain or [] for key in unit.fileKey)
        for disk in layout.disk or []
    }


def describe_fresh(vm: Any) -> VmInventory:
    """`describe` after asking vSphere to refresh the VM's storage figures
    (`layoutEx` is updated lazily): what a backup is planned from. A refresh that
    fails leaves the older figures, which only feed an estimate."""
    try:
        vm.RefreshStorageInfo()
    except vmodl.MethodFault as exc:
        log.warning("storage figures of VM %r not refreshed: %s", vm.name, type(exc).__name__)
    return describe(vm)


def describe(vm: Any) -> VmInventory:
    config = vm.config
    if config is None:
        raise VcenterError(f"VM {vm.name!r} has no configuration (inaccessible?)")
    devices = config.hardware.device
    allocated = allocated_bytes(vm.layoutEx)
    disks = [
        d.model_copy(update={"allocated_bytes": allocated.get(d.key)})
        for d in virtual_disks(devices)
    ]
    return VmInventory(
        name=vm.name,
        uuid=config.instanceUuid,
        path=inventory_path(vm),
        power_state=str(vm.runtime.powerState),
        cbt_enabled=bool(config.changeTrackingEnabled),
        tools_running=tools_running(vm),
        disks=disks,
        controllers=controllers(devices),
        guest_id=config.guestId or None,
        num_cpus=config.hardware.numCPU or None,
        memory_mb=config.hardware.memoryMB or None,
        firmware=config.firmware or None,
    )


@dataclass(frozen=True)
class BackupFacts:
    """What a backup checks before its snapshot: a subset of `describe`."""

    uuid: str
    cbt_enabled: bool
    tools_running: bool
    disks: list[DiskInventory]


_FACTS = (
    "config.instanceUuid",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "guest.toolsRunningStatus",
)


def backup_facts(vc: Vcenter, vm: Any, name: str) -> BackupFacts:
    """In one property-collector round trip (describe takes one per property and
    per parent folder, and parses the whole configuration)."""
    spec = _PC.FilterSpec(
        objectSet=[_PC.ObjectSpec(obj=vm, skip=False)],
        propSet=[_PC.PropertySpec(type=vim.VirtualMachine, pathSet=list(_FACTS))],
    )
    result = vc.content.propertyCollector.RetrieveContents([spec]) or []
    found = {p.name: p.val for r in result for p in r.propSet or []}
    if "config.hardware.device" not in found:
        raise VcenterError(f"VM {name!r} has no configuration (inaccessible?)")
    return BackupFacts(
        uuid=found.get("config.instanceUuid") or "",
        cbt_enabled=bool(found.get("config.changeTrackingEnabled")),
        tools_running=found.get("guest.toolsRunningStatus") == "guestToolsRunning",
        disks=virtual_disks(found["config.hardware.device"]),
    )


def tools_running(vm: Any) -> bool:
    guest = vm.guest
    return guest is not None and guest.toolsRunningStatus == "guestToolsRunning"


def list_vms(vc: Vcenter) -> list[VmInventory]:
    return sorted((describe(vm) for vm, _name in _all_vms(vc)), key=lambda v: v.name)


def enable_cbt(vm: Any) -> None:
    """Turn CBT on. VMware applies it at the next snapshot cycle (or power cycle); the
    first backup after it is a full anyway."""
    spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
    wait_task(vm.ReconfigVM_Task(spec=spec), f"enable CBT on {vm.name}")
