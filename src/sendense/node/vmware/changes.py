"""Changed Block Tracking: which areas of a disk to read.

`QueryChangedDiskAreas` answers for a window starting at `startOffset`; callers
loop until the whole capacity is covered. Change ID `*` asks for the allocated
areas (a full backup that skips what was never written).
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from sendense.node.vmware.connection import VcenterError

Area = tuple[int, int]


class ChangeIdInvalid(VcenterError):
    """VMware no longer knows the change ID (CBT reset, disk moved...): read a full."""


def changed_areas(
    vm: Any, snapshot: Any, disk_key: int, capacity: int, change_id: str
) -> list[Area]:
    areas: list[Area] = []
    offset = 0
    while offset < capacity:
        try:
            info = vm.QueryChangedDiskAreas(
                snapshot=snapshot, deviceKey=disk_key, startOffset=offset, changeId=change_id
            )
        except (vim.fault.FileFault, vmodl.fault.InvalidArgument) as exc:
            raise ChangeIdInvalid(
                f"disk {disk_key}: VMware rejected change ID {change_id!r}: "
                f"{getattr(exc, 'msg', '') or type(exc).__name__}"
            ) from exc
        for extent in info.changedArea or []:
            start, length = int(extent.start), int(extent.length)
            end = min(start + length, capacity)
            if end > start:
                _append(areas, start, end - start)
        covered = int(info.startOffset) + int(info.length)
        if covered <= offset:
            raise VcenterError(
                f"disk {disk_key}: QueryChangedDiskAreas made no progress at {offset}"
            )
        offset = covered
    return areas


def _append(areas: list[Area], start: int, length: int) -> None:
    if areas and areas[-1][0] + areas[-1][1] >= start:
        prev_start, prev_len = areas[-1]
        areas[-1] = (prev_start, max(prev_start + prev_len, start + length) - prev_start)
    else:
        areas.append((start, length))


def whole_disk(capacity: int) -> list[Area]:
    return [(0, capacity)]
