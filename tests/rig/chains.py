"""Restore points made at the hub level, fast: the hub's real exports and qemu-nbd,
our NBD writer in place of a node, the guest's disks as bytes in memory, and the
restore point's time set to a chosen day (the injected clock)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from sqlalchemy import update

from sendense.common.checksum import BlockHasher, block_digest, blocks
from sendense.hub.backup.disks import DiskResult, DiskSpec
from sendense.hub.db.models import RestorePoint
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.writer import NbdWriter

BLOCK = 1 << 20


async def _write(uri: str, data: bytes, areas: list[tuple[int, int]]) -> str:
    hasher = BlockHasher()
    zero = bytes(BLOCK)
    async with NbdWriter(uri, max_in_flight=4, request_size=BLOCK) as writer:
        for offset, length in blocks(areas, BLOCK):
            chunk = data[offset : offset + length]
            hasher.add(offset, length, block_digest(chunk, zero))
            await writer.write(offset, chunk)
        await writer.flush()
    return hasher.hexdigest()


def hub_backup(
    hub: Hub,
    vm_name: str,
    disks: dict[int, bytes],
    changed: dict[int, list[tuple[int, int]]],
    when: datetime,
    max_chain: int | None = None,
) -> str:
    """One backup: a full of every disk without a parent, else the `changed` areas."""
    specs = [DiskSpec(key, len(data)) for key, data in disks.items()]
    prepared = hub.ledger.prepare(vm_name, specs, "auto", max_chain=max_chain)
    areas = {
        d.key: [(0, len(disks[d.key]))] if d.backup_type == "full" else changed[d.key]
        for d in prepared.disks
    }

    async def write_all() -> list[str]:
        return await asyncio.gather(
            *(
                _write(hub.exports.uri(d.target.port, d.target.export), disks[d.key], areas[d.key])
                for d in prepared.disks
            )
        )

    checksums = asyncio.run(write_all())
    results = {
        d.key: DiskResult(
            f"cid-{when.isoformat()}",
            sum(n for _, n in areas[d.key]),
            checksum,
            areas=areas[d.key],
            checksum_block=BLOCK,
        )
        for d, checksum in zip(prepared.disks, checksums, strict=True)
    }
    point_id = hub.ledger.finish(prepared.job_id, results)
    with hub.db.session() as s:
        s.execute(
            update(RestorePoint)
            .where(RestorePoint.id == point_id)
            .values(created_at=when, completed_at=when)
        )
    return point_id


def same_as(image: Path, data: bytes, scratch: Path) -> bool:
    raw = scratch / "expected.raw"
    raw.write_bytes(data)
    try:
        return QemuImg().compare(raw, image, "raw", "qcow2")
    finally:
        raw.unlink()
