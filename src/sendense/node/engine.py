"""The per-disk copy: areas -> reader -> NBD writer, with progress, a checksum and
where the time went (`pace`).

Memory per disk stays bounded: `readers` chunks being read (twice: a read's
buffer is copied into its bytes) plus the writer's `in_flight` chunks being
written, `chunk` bytes each (2 x 4 + 8 at 4 MiB = 64 MiB), plus each of the
writer's `connections` its reply buffer (256 KiB). The `in_flight` chunks are
the writer's total, shared among its connections (4 by default: 2 each): more
connections take no more data memory.
Small areas (CBT blocks) are read up to `ranges_per_read` at a time in one
request from a reader that can (`ManyReader`), together at most `chunk` bytes:
the bound holds, and the checksum and progress still go chunk by chunk. That
bound is what a stream takes from the node's memory budget before it starts,
and its NBD data goes at the node's bandwidth limit (limits.py). Each batch's
read takes a place at the node's `RestoreFirst` gate first, held until its last
area is in: free when no restore copies, a few for all backups together when
one does. The wait there counts as neither source nor target time (pace.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from sendense.common.aio import run_all
from sendense.common.checksum import BlockHasher, block_digest, blocks
from sendense.common.contract import DiskProgress
from sendense.common.errors import SendenseError
from sendense.common.progress import Meter
from sendense.common.targets import NbdTarget
from sendense.nbd.errors import NbdError
from sendense.nbd.protocol import READ_BUFFER
from sendense.nbd.round_trips import RoundTrips
from sendense.nbd.writer import NbdWriter
from sendense.node.limits import Bandwidth, MemoryBudget, RestoreFirst
from sendense.node.pace import Pace
from sendense.node.vmware.readers import DiskReader, ManyReader

log = logging.getLogger(__name__)
Area = tuple[int, int]
MiB = 1 << 20


@dataclass(frozen=True)
class CopyTuning:
    chunk: int = 4 * MiB
    readers: int = 4
    in_flight: int = 8
    # An incremental's 64 KiB areas each cost a round trip; a multi-range read
    # of 64 of them took about as long as 3 single ones (readers.py).
    ranges_per_read: int = 64
    # NBD connections per disk, the in-flight chunks shared among them: through
    # the tunnel each is an ssh connection of its own, whose SSH channel (2 MiB)
    # and TCP windows bound what it carries per round trip (docs/decisions.md,
    # "Latency between node and hub").
    connections: int = 4
    # ...opened only when a round trip on the first takes this long: on a near
    # path one connection's windows are not the limit, and more cost CPU.
    spread_from_rtt: float = 0.003

    @property
    def stream_bytes(self) -> int:
        """The most a disk's copy holds at once: chunks being read (each read's
        buffer and the bytes it becomes) and written, and each NBD connection's
        reply buffer."""
        connections = min(self.connections, self.in_flight)
        return (2 * self.readers + self.in_flight) * self.chunk + connections * READ_BUFFER


@dataclass
class NodeLimits:
    """What every stream of the node shares (limits.py)."""

    budget: MemoryBudget
    bandwidth: Bandwidth
    # Backups' reads yield to the node's restores (limits.py).
    priority: RestoreFirst = field(default_factory=RestoreFirst)
    # The least round trip of each path to the hub, lately (nbd/round_trips.py).
    round_trips: RoundTrips = field(default_factory=RoundTrips)


@dataclass
class DiskPlan:
    target: NbdTarget
    capacity: int
    areas: list[Area]
    progress: DiskProgress
    # A full into an overlay (the change ID was refused) must zero what it does
    # not read, or the parent's old data would show through.
    zero_gaps: bool = False
    # What the writer dials (node/forwards.py); empty: the target's own URI.
    uri: str = ""
    # The path to the hub its round trips are remembered under (forwards.py
    # `path_key`); empty: the URI's.
    path: str = ""

    @property
    def fresh_image(self) -> bool:
        return self.progress.backup_type == "full" and not self.zero_gaps


# The blocks the checksum covers are the blocks read: a verifier reads them again.
chunks = blocks


def batches(work: Iterator[Area], size: int, most: int) -> Iterator[list[Area]]:
    """Consecutive chunks grouped for one read: at most `most` of them, together
    at most `size` bytes (a full chunk goes alone)."""
    batch: list[Area] = []
    total = 0
    for offset, length in work:
        if batch and (len(batch) >= most or total + length > size):
            yield batch
            batch, total = [], 0
        batch.append((offset, length))
        total += length
    if batch:
        yield batch


def gaps(areas: list[Area], capacity: int) -> Iterator[Area]:
    position = 0
    for start, length in sorted(areas):
        if start > position:
            yield position, start - position
        position = max(position, start + length)
    if position < capacity:
        yield position, capacity - position


async def copy_disk(
    plan: DiskPlan, reader: DiskReader, tuning: CopyTuning, limits: NodeLimits | None = None
) -> None:
    """Copy one disk, once the node's memory budget has room for it; an NBD
    failure names the hub's target, not only the local socket it is reached through."""
    try:
        if limits is None:
            await _copy(plan, reader, tuning, None, RestoreFirst(), None)
            return
        what = f"disk {plan.target.disk_key}"
        async with limits.budget.hold(tuning.stream_bytes, what):
            await _copy(plan, reader, tuning, limits.bandwidth, limits.priority, limits.round_trips)
    except NbdError as exc:
        if not plan.uri or plan.uri == plan.target.uri:
            raise
        raise SendenseError(f"target {plan.target.uri}: {exc}") from None


async def _copy(
    plan: DiskPlan,
    reader: DiskReader,
    tuning: CopyTuning,
    bandwidth: Bandwidth | None,
    priority: RestoreFirst,
    round_trips: RoundTrips | None,
) -> None:
    progress = plan.progress
    progress.bytes_total = sum(length for _start, length in plan.areas)
    progress.phase = "copying"
    meter = Meter(progress)
    pace = Pace(progress.time_split, tuning.readers)
    hasher = BlockHasher()
    zero_block = bytes(tuning.chunk)
    many = reader if isinstance(reader, ManyReader) else None
    most = tuning.ranges_per_read if many is not None else 1
    work = batches(chunks(plan.areas, tuning.chunk), tuning.chunk, most)
    yielded = 0  # batches whose read waited for a restore
    async with NbdWriter(
        plan.uri or plan.target.uri,
        max_in_flight=tuning.in_flight,
        request_size=tuning.chunk,
        skip_zeroes=plan.fresh_image,
        pace=bandwidth.take if bandwidth is not None and bandwidth.rate else None,
        connections=tuning.connections,
        spread_from_rtt=tuning.spread_from_rtt,
        round_trips=round_trips,
        path=plan.path or None,
    ) as writer:
        if writer.size < plan.capacity:
            raise SendenseError(
                f"disk {plan.target.disk_key}: target {plan.target.uri} holds {writer.size} "
                f"bytes, the disk {plan.capacity}"
            )

        def digest(data: bytes) -> bytes:
            return block_digest(data, zero_block)

        async def one(area: Area) -> AsyncIterator[tuple[int, bytes, bytes | None]]:
            yield 0, await reader.read(*area), None

        async def pump() -> None:
            nonlocal yielded
            for batch in work:
                # A batch's areas come as they arrive: written while the rest is read.
                async with priority.backup_read(sum(n for _, n in batch)) as place:
                    yielded += place.waited
                    # The reader hashes in its own thread when it can.
                    arrivals = many.read_many(batch, digest) if many else one(batch[0])
                    count = 0
                    async for index, data, digested in pace.arrivals(arrivals):
                        offset, length = batch[index]
                        progress.bytes_read += length
                        hasher.add(offset, length, digested or digest(data))
                        count += 1
                        if count == len(batch):
                            place.done()  # read: the place goes before the write
                        with pace.handing_over():
                            await writer.write(offset, data)
                        meter.advance(length)
                if count != len(batch):
                    raise SendenseError(f"the reader returned {count} of {len(batch)} areas")

        await run_all(pump() for _ in range(tuning.readers))
        progress.phase = "flushing"
        with pace.draining():
            if plan.zero_gaps:
                for start, length in gaps(plan.areas, plan.capacity):
                    await writer.zero(start, length)
            await writer.flush()
        progress.bytes_written = writer.stats.data_bytes
        progress.zero_bytes = writer.stats.zero_bytes
    if yielded:
        log.info("disk %d: %d reads waited for restores on the node", plan.target.disk_key, yielded)
    progress.phase = "finishing"
    progress.checksum = hasher.hexdigest()
    progress.eta_seconds = 0.0
    progress.seconds = time.monotonic() - meter.started
