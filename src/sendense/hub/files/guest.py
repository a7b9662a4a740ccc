"""What a restore point's disks hold, as the appliance finds it: each disk's
partition table, and every filesystem (on a partition, a logical volume, or a
whole disk) with its type, label, size and use, mounted read-only at its own
mount point. Encrypted volumes are reported, not opened: the hub has no key."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sendense.hub.files.appliance import Appliance, ApplianceFailed

log = logging.getLogger(__name__)
ENCRYPTED = {"crypto_LUKS": "LUKS", "BitLocker": "BitLocker"}
NOT_FILES = {"swap", "LVM2_member", "linux_raid_member"}
TABLES = {"dos": "msdos"}  # blkid's name for an MBR, as libguestfs calls it
# A journal left dirty (a crash-consistent snapshot) is not replayed onto a
# read-only device; these options read the filesystem as it was last committed.
NO_REPLAY = {"xfs": "ro,norecovery", "ext3": "ro,noload", "ext4": "ro,noload"}


@dataclass(frozen=True)
class DiskLayout:
    disk_key: int
    device: str  # /dev/sda, in the point's disk order
    partition_table: str | None  # "gpt", "msdos", or None (a bare filesystem, LVM, empty)


@dataclass
class Filesystem:
    id: str  # the appliance's device: /dev/sda1, /dev/vg0/data, /dev/sdd
    type: str  # ext4, xfs, ntfs, vfat, btrfs, crypto_LUKS, unknown...
    label: str
    size: int
    used: int | None
    disk_key: int | None  # None for a logical volume (it may span disks)
    encrypted: str | None  # "LUKS", "BitLocker"
    mounted: bool
    error: str | None
    mount: str  # its mount point in the appliance


def _disk_of(device: str, disks: list[DiskLayout]) -> int | None:
    base = re.sub(r"\d+$", "", device)
    return next((d.disk_key for d in disks if d.device == base), None)


def discover(
    appliance: Appliance, disk_keys: list[int]
) -> tuple[list[DiskLayout], list[Filesystem]]:
    """Each disk's partition table, then what every partition, logical volume and
    unpartitioned disk holds, by its signature: one `blkid` in the appliance per
    device (each program the appliance runs costs most of a second under TCG,
    so not parted, vfs_type and vfs_label each; nor libguestfs'
    list_filesystems, which mounts each one to look)."""
    g = appliance.handle()
    devices = appliance.call(g.list_devices)
    disks = []
    for key, device in zip(disk_keys, devices, strict=False):
        table = _blkid(appliance, device).get("PTTYPE", "")
        disks.append(DiskLayout(key, device, TABLES.get(table, table) or None))
    candidates = [d.device for d in disks if d.partition_table is None]
    candidates += appliance.call(g.list_partitions)
    candidates += appliance.call(g.lvs)
    filesystems: list[Filesystem] = []
    for device in candidates:
        found = _blkid(appliance, device)
        fstype = found.get("TYPE", "")
        if fstype in NOT_FILES or (not fstype and device in devices):
            continue  # a physical volume, swap, or an empty disk
        fs = Filesystem(
            id=device,
            type=fstype or "unknown",
            label=found.get("LABEL", ""),
            size=int(appliance.call(g.blockdev_getsize64, device)),
            used=None,
            disk_key=_disk_of(device, disks) if device.startswith("/dev/sd") else None,
            encrypted=ENCRYPTED.get(fstype),
            mounted=False,
            error=None,
            mount=f"/fs{len(filesystems)}",
        )
        _mount(appliance, fs)
        filesystems.append(fs)
    return disks, filesystems


def _blkid(appliance: Appliance, device: str) -> dict[str, str]:
    """The device's signatures (TYPE, LABEL, PTTYPE...); {} when it has none."""
    try:
        return dict(appliance.call(appliance.handle().blkid, device))
    except ApplianceFailed:
        if appliance.failed:
            raise
        return {}  # blkid found nothing: an empty disk, or unknown bytes


def _mount(appliance: Appliance, fs: Filesystem) -> None:
    if fs.encrypted:
        fs.error = f"encrypted ({fs.encrypted}): the hub holds no key to open it"
        return
    if fs.type == "unknown":
        fs.error = "no filesystem the appliance knows (damaged, or empty)"
        return
    g = appliance.handle()
    appliance.call(g.mkmountpoint, fs.mount)
    tried = ["ro", NO_REPLAY.get(fs.type)]
    for options in (o for o in tried if o):
        try:
            appliance.call(g.mount_options, options, fs.id, fs.mount)
        except ApplianceFailed as exc:
            if appliance.failed:
                raise
            fs.error = f"could not mount it read-only: {exc.message.splitlines()[0]}"
            continue
        fs.mounted, fs.error = True, None
        break
    if not fs.mounted:
        log.warning("file restore: %s (%s) did not mount: %s", fs.id, fs.type, fs.error)
        return
    try:
        vfs = appliance.call(g.statvfs, fs.mount)
        fs.used = (int(vfs["blocks"]) - int(vfs["bfree"])) * int(vfs["frsize"])
    except ApplianceFailed:
        if appliance.failed:
            raise
