"""The node's reader alone: the same areas a full backup read, fetched to nowhere.

The baseline of `full_vs_read_only` (bench/node_backup.py): the node's own
HTTPS datastore reader with the same tuning (chunk, connections, readers per
disk, multi-range batches), both disks at once, on its own vCenter session;
no NBD, no hub. What the full backup adds to this is the cost of writing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import disk

from sendense.common.aio import run_all
from sendense.node.engine import Area, CopyTuning, batches, chunks
from sendense.node.vmware.connection import connect
from sendense.node.vmware.readers import HttpsDatastoreReader


async def read_disk(reader: HttpsDatastoreReader, areas: list[Area], tuning: CopyTuning) -> int:
    work = batches(chunks(areas, tuning.chunk), tuning.chunk, tuning.ranges_per_read)
    total = 0

    async def pump() -> None:
        nonlocal total
        for batch in work:
            if len(batch) == 1:
                total += len(await reader.read(*batch[0]))
                continue
            async for _, data, _ in reader.read_many(batch):
                total += len(data)

    await run_all(pump() for _ in range(tuning.readers))
    return total


async def read_only(
    vc: Vcsim, vm: Any, areas: dict[int, list[Area]], tuning: CopyTuning
) -> tuple[float, int]:
    """Seconds to read every disk's `areas` at once, and the bytes read."""
    session = await asyncio.to_thread(
        connect, vc.host, vc.username, vc.password, vc.thumbprint, False
    )
    readers = [
        HttpsDatastoreReader(
            session.host,
            session.port,
            session.ssl_context,
            session.session_cookie,
            "DC0",
            disk(vm, key).backing.fileName,
            connections=tuning.readers,
        )
        for key in areas
    ]
    try:
        totals: list[int] = []

        async def one(reader: HttpsDatastoreReader, disk_areas: list[Area]) -> None:
            totals.append(await read_disk(reader, disk_areas, tuning))

        started = time.perf_counter()
        await run_all(one(r, a) for r, a in zip(readers, areas.values(), strict=True))
        return time.perf_counter() - started, sum(totals)
    finally:
        for reader in readers:
            await reader.close()
        await asyncio.to_thread(session.close)
