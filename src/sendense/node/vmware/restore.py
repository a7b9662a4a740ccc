"""A restore point back into vCenter as a VM: where it goes (datacenter, datastore,
folder, resource pool), whether it may go there, the VM itself with the recorded
controllers and disks, and the upload of each disk's flat file.

Nothing here changes vCenter until `create_vm`: `plan` only looks, so bad input
(an unknown datastore, a name in use, a running VM, too little room) is refused
with nothing made. A VM is only ever replaced when the caller says `force` and it
is powered off; a running VM is never touched.
"""

from __future__ import annotations

import http.client
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pyVmomi import vim

from sendense.common.contract import (
    ControllerInventory,
    DiskLayout,
    RestoreCheckRequest,
    RestoreCheckResponse,
    VmLayout,
)
from sendense.common.errors import Conflict, InvalidInput, NotFound, SendenseError
from sendense.node.vmware.connection import Vcenter, VcenterError
from sendense.node.vmware.inventory import controllers, inventory_path, virtual_disks, vms_named
from sendense.node.vmware.readers import flat_file
from sendense.node.vmware.tasks import wait_task

_DS_NAME = re.compile(r"^\[(?P<ds>[^\]]+)\]")
_PCI_CONTROLLER_KEY = 100  # the virtual PCI bus every VM has
# A new VM has these already (vSphere adds IDE 200 and 201 to every VM).
_DEFAULT_CONTROLLERS = ("VirtualIDEController",)
_SCSI_CONTROLLER_UNIT = 7  # a SCSI controller's own unit number
MiB = 1 << 20


class DatastoreFull(SendenseError):
    """The chosen datastore cannot hold the restored disks: pick another one."""

    http_status = 409
    exit_code = 7
    code = "insufficient_space"


@dataclass
class RestoreTarget:
    """Where the VM goes, found by `plan`."""

    datacenter: Any
    datastore: Any
    folder: Any
    pool: Any
    existing: Any | None
    answer: RestoreCheckResponse


def _datacenters(folder: Any) -> list[Any]:
    found = []
    for entity in folder.childEntity:
        if isinstance(entity, vim.Datacenter):
            found.append(entity)
        elif isinstance(entity, vim.Folder):
            found.extend(_datacenters(entity))
    return found


def datastore_of(path: str | None) -> str | None:
    """`[LocalDS_0] vm/vm.vmdk` -> `LocalDS_0`."""
    match = _DS_NAME.match(path.strip()) if path else None
    return match["ds"] if match else None


def _datastore(vc: Vcenter, name: str) -> tuple[Any, Any]:
    found = [
        (dc, ds)
        for dc in _datacenters(vc.content.rootFolder)
        for ds in dc.datastore
        if ds.name == name
    ]
    if not found:
        raise NotFound(f"vCenter has no datastore named {name!r}")
    if len(found) > 1:
        raise Conflict(f"{len(found)} datacenters have a datastore named {name!r}")
    return found[0]


def _folder(vc: Vcenter, datacenter: Any, ref: str | None) -> Any:
    if not ref:
        return datacenter.vmFolder
    base = inventory_path(datacenter)
    path = ref.strip("/")
    if not path.startswith(f"{base}/"):
        path = f"{base}/vm/{path}"  # relative to the datacenter's VM folder
    found = vc.content.searchIndex.FindByInventoryPath(path)
    kinds = [str(kind) for kind in found.childType or []] if isinstance(found, vim.Folder) else []
    if "VirtualMachine" not in kinds:
        raise NotFound(
            f"no VM folder {ref!r} in datacenter {datacenter.name!r} (looked for {path})"
        )
    return found


def _resource_pool(datastore: Any) -> Any:
    """The root pool of the first cluster or host that mounts the datastore."""
    for mount in datastore.host or []:
        compute = mount.key.parent
        if isinstance(compute, vim.ComputeResource) and compute.resourcePool is not None:
            return compute.resourcePool
    raise Conflict(f"no host mounts datastore {datastore.name!r}")


def _free_bytes(datastore: Any) -> int:
    """vCenter's figure, refreshed by vCenter itself every few minutes. Not
    RefreshDatastore: the upload fails cleanly on a full datastore anyway, and the
    simulator answers that call with an empty body."""
    summary = datastore.summary
    if not summary.accessible:
        raise Conflict(f"datastore {datastore.name!r} is not accessible")
    return int(summary.freeSpace or 0)


def bytes_needed(layout: VmLayout, power_on: bool) -> int:
    """Each disk is written whole (a datastore upload has no holes); a VM that
    is powered on also gets a swap file as large as its memory."""
    needed = sum(d.capacity_bytes for d in layout.disks)
    if power_on and layout.memory_mb:
        needed += layout.memory_mb * MiB
    return needed


def plan(vc: Vcenter, req: RestoreCheckRequest) -> RestoreTarget:
    """Find where the VM goes and refuse what may not happen; changes nothing."""
    name = req.datastore or datastore_of(req.layout.disks[0].datastore_path)
    if not name:
        raise InvalidInput("name the datastore: the restore point does not record one")
    datacenter, datastore = _datastore(vc, name)
    folder = _folder(vc, datacenter, req.folder)
    pool = _resource_pool(datastore)
    existing = _existing(vc, req)
    needed = bytes_needed(req.layout, req.power_on)
    free = _free_bytes(datastore)
    if free < needed:
        raise DatastoreFull(
            f"datastore {name!r} has {free >> 20} MiB free, the VM needs {needed >> 20} MiB"
        )
    answer = RestoreCheckResponse(
        vm_name=req.vm_name,
        datacenter=datacenter.name,
        datastore=name,
        folder=inventory_path(folder),
        replaces=existing is not None,
        bytes_needed=needed,
        bytes_free=free,
    )
    return RestoreTarget(datacenter, datastore, folder, pool, existing, answer)


def _existing(vc: Vcenter, req: RestoreCheckRequest) -> Any | None:
    matches = vms_named(vc, req.vm_name)
    if not matches:
        return None
    if len(matches) > 1:
        raise Conflict(f"{len(matches)} VMs are named {req.vm_name!r}: restore under a new name")
    vm = matches[0]
    if not req.force:
        raise Conflict(
            f"VM {req.vm_name!r} exists: choose another name, or replace it (powered off) "
            "with force"
        )
    ensure_powered_off(vm)
    return vm


def ensure_powered_off(vm: Any) -> None:
    state = str(vm.runtime.powerState)
    if state != "poweredOff":
        raise Conflict(
            f"VM {vm.name!r} is {state}: a restore never replaces a running VM; power it off first"
        )


def destroy(vm: Any) -> None:
    ensure_powered_off(vm)  # again: it may have been started since the check
    what = f"destroy VM {vm.name}"  # before: a destroyed VM has no name to read
    wait_task(vm.Destroy_Task(), what)


def _controller_spec(controller: ControllerInventory) -> Any:
    kind = getattr(vim.vm.device, controller.type, None)
    if kind is None or not issubclass(kind, vim.vm.device.VirtualController):
        raise InvalidInput(f"controller {controller.key}: unknown type {controller.type!r}")
    device = kind(
        key=controller.key, busNumber=controller.bus_number, controllerKey=_PCI_CONTROLLER_KEY
    )
    if isinstance(device, vim.vm.device.VirtualSCSIController):
        sharing = vim.vm.device.VirtualSCSIController.Sharing
        device.sharedBus = sharing(controller.shared_bus or "noSharing")
    add = vim.vm.device.VirtualDeviceSpec.Operation.add
    return vim.vm.device.VirtualDeviceSpec(operation=add, device=device)


def _units(layout: VmLayout) -> dict[int, int]:
    """Each disk's unit number: the recorded one, else the next free one on its
    controller (never a SCSI controller's own unit 7)."""
    taken = {(d.controller_key, d.unit_number) for d in layout.disks if d.unit_number is not None}
    units = {}
    for disk in layout.disks:
        unit = disk.unit_number
        if unit is None:
            unit = 0
            while (disk.controller_key, unit) in taken or unit == _SCSI_CONTROLLER_UNIT:
                unit += 1
            taken.add((disk.controller_key, unit))
        units[disk.key] = unit
    return units


def _disk_spec(disk: DiskLayout, unit: int, datastore: str) -> Any:
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=disk.thin_provisioned
    )
    device = vim.vm.device.VirtualDisk(
        key=disk.key,
        controllerKey=disk.controller_key,
        unitNumber=unit,
        capacityInBytes=disk.capacity_bytes,
        capacityInKB=disk.capacity_bytes // 1024,
        backing=backing,
    )
    return vim.vm.device.VirtualDeviceSpec(
        operation=vim.vm.device.VirtualDeviceSpec.Operation.add,
        fileOperation=vim.vm.device.VirtualDeviceSpec.FileOperation.create,
        device=device,
    )


def config_spec(name: str, layout: VmLayout, datastore: str) -> Any:
    """The new VM: the recorded controllers and disks with their device keys.
    vSphere numbers disks from controller and unit (2000 + 16 x bus + unit on
    SCSI), so the same controllers and units give the same keys; the keys are
    passed as well, for the servers that keep them."""
    wanted = {d.controller_key for d in layout.disks}
    controllers = [
        _controller_spec(c)
        for c in layout.controllers
        if c.key in wanted and c.type not in _DEFAULT_CONTROLLERS
    ]
    units = _units(layout)
    disks = [_disk_spec(d, units[d.key], datastore) for d in layout.disks]
    spec = vim.vm.ConfigSpec(
        name=name,
        guestId=layout.guest_id or "otherGuest64",
        numCPUs=layout.num_cpus or 1,
        memoryMB=layout.memory_mb or 1024,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=controllers + disks,
    )
    if layout.firmware:
        spec.firmware = layout.firmware
    return spec


def create_vm(target: RestoreTarget, name: str, layout: VmLayout) -> Any:
    spec = config_spec(name, layout, target.answer.datastore)
    task = target.folder.CreateVM_Task(config=spec, pool=target.pool)
    return wait_task(task, f"create VM {name}")


@dataclass(frozen=True)
class MadeDisk:
    key: int
    datastore_path: str


def created_disks(vm: Any, layout: VmLayout) -> dict[int, MadeDisk]:
    """Recorded disk key -> the new VM's disk in the same place (controller type,
    bus and unit; vSphere may renumber keys), else the one with the same key."""
    devices = list(vm.config.hardware.device)
    buses = {c.key: (c.type, c.bus_number) for c in controllers(devices)}
    made_at = {(buses.get(d.controller_key), d.unit_number): d for d in virtual_disks(devices)}
    by_key = {d.key: d for d in virtual_disks(devices)}
    recorded = {c.key: (c.type, c.bus_number) for c in layout.controllers}
    units = _units(layout)
    found = {}
    for disk in layout.disks:
        place = recorded.get(disk.controller_key)
        made = made_at.get((place, units[disk.key])) if place else None
        made = made or by_key.get(disk.key)
        if made is None:
            raise VcenterError(f"the new VM {vm.name!r} has no disk {disk.key}")
        if made.capacity_bytes != disk.capacity_bytes:
            raise VcenterError(
                f"the new VM's disk {made.key} holds {made.capacity_bytes} bytes, "
                f"not {disk.capacity_bytes}"
            )
        found[disk.key] = MadeDisk(made.key, made.datastore_path)
    return found


def power_on(vm: Any) -> None:
    wait_task(vm.PowerOnVM_Task(), f"power on VM {vm.name}")


class DatastoreUpload:
    """One HTTPS PUT of a disk's flat file to `/folder/...`, its body sent piece by
    piece (the length is known up front), TLS pinned like the reads. Blocking:
    call from a thread."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        session_cookie: str,
        datacenter: str,
        datastore_path: str,
        size: int,
        timeout: float = 300.0,
    ) -> None:
        datastore, path = flat_file(datastore_path)
        self.path = f"/folder/{quote(path)}?dcPath={quote(datacenter)}&dsName={quote(datastore)}"
        self.size = size
        self.sent = 0
        self._cookie = session_cookie
        self._conn = http.client.HTTPSConnection(host, port, context=ssl_context, timeout=timeout)

    def open(self) -> None:
        try:
            self._conn.putrequest("PUT", self.path, skip_accept_encoding=True)
            self._conn.putheader("Content-Type", "application/octet-stream")
            self._conn.putheader("Content-Length", str(self.size))
            self._conn.putheader("Cookie", self._cookie)
            self._conn.endheaders()
        except (OSError, http.client.HTTPException) as exc:
            raise VcenterError(f"datastore upload to {self.path} failed: {exc}") from exc

    def send(self, data: bytes | bytearray) -> None:
        if self.sent + len(data) > self.size:
            raise SendenseError(f"upload to {self.path}: more than {self.size} bytes")
        try:
            self._conn.send(data)
        except (OSError, http.client.HTTPException) as exc:
            raise VcenterError(
                f"datastore upload to {self.path} failed after {self.sent} bytes: {exc}"
            ) from exc
        self.sent += len(data)

    def finish(self) -> None:
        """The server's answer, then a HEAD that the file has the disk's size."""
        if self.sent != self.size:
            raise SendenseError(f"upload to {self.path}: {self.sent} of {self.size} bytes sent")
        try:
            response = self._conn.getresponse()
            body = response.read()
            if response.status not in (200, 201, 204):
                text = body[:200].decode("utf-8", "replace").strip()
                raise VcenterError(
                    f"datastore upload to {self.path} answered HTTP {response.status} {text}"
                )
            self._conn.request("HEAD", self.path, headers={"Cookie": self._cookie})
            head = self._conn.getresponse()
            head.read()
        except (OSError, http.client.HTTPException) as exc:
            raise VcenterError(f"datastore upload to {self.path} failed: {exc}") from exc
        length = head.getheader("Content-Length")
        if head.status != 200 or length is None or int(length) != self.size:
            raise VcenterError(
                f"after the upload {self.path} answers HTTP {head.status} with "
                f"{length} bytes, not {self.size}"
            )

    def close(self) -> None:
        self._conn.close()
