"""A restore point's disk as a stream of raw bytes (the HTTP download).

The chain is read through a read-only qemu-nbd on a Unix socket (local_nbd), with
several 4 MiB reads in flight and the answers passed on in order. Chunks where
`qemu-img map` finds no data (holes, zero clusters) go out as zeroes, unread.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sendense.common.errors import ToolFailed
from sendense.hub.disk_export import DiskSource
from sendense.hub.local_nbd import read_only_uri
from sendense.nbd.client import NbdClient
from sendense.nbd.protocol import CMD_READ

CHUNK = 4 << 20
IN_FLIGHT = 8
_ZERO = bytes(CHUNK)
Extent = tuple[int, int]  # start, end


@dataclass(frozen=True)
class RawStream:
    size: int
    chunks: AsyncGenerator[bytes, None]


def data_extents(qemu_img: str, image: Path) -> list[Extent]:
    """The ranges of the chain that hold data, merged, in order."""
    argv = [qemu_img, "map", "--output=json", "-f", "qcow2", str(image)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ToolFailed(argv, None, f"{qemu_img} is not installed") from exc
    if result.returncode != 0:
        raise ToolFailed(argv, result.returncode, result.stderr)
    merged: list[Extent] = []
    for entry in json.loads(result.stdout):
        if not entry["data"] or entry["zero"]:
            continue
        start, end = entry["start"], entry["start"] + entry["length"]
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


async def _chunks(client: NbdClient, size: int, extents: list[Extent]) -> AsyncGenerator[bytes]:
    pending: deque[asyncio.Future[bytes] | bytes] = deque()
    index = 0
    try:
        for offset in range(0, size, CHUNK):
            length = min(CHUNK, size - offset)
            while index < len(extents) and extents[index][1] <= offset:
                index += 1
            if index < len(extents) and extents[index][0] < offset + length:
                pending.append(client.submit(CMD_READ, offset, length))
            else:
                pending.append(_ZERO if length == CHUNK else bytes(length))
            if len(pending) >= IN_FLIGHT:
                yield await _ready(pending.popleft())
        while pending:
            yield await _ready(pending.popleft())
    finally:
        for item in pending:  # the reader went away: nothing waits for these any more
            if isinstance(item, asyncio.Future):
                item.cancel()
        await asyncio.gather(*(i for i in pending if isinstance(i, asyncio.Future)),
                             return_exceptions=True)  # fmt: skip


async def _ready(item: asyncio.Future[bytes] | bytes) -> bytes:
    return item if isinstance(item, bytes) else await item


@asynccontextmanager
async def raw_stream(source: DiskSource, scratch: Path, qemu_img: str) -> AsyncIterator[RawStream]:
    """The disk's bytes, from offset 0 to its virtual size; the read-only server
    stops when the context ends, whether or not the stream was read to its end."""
    extents = await asyncio.to_thread(data_extents, qemu_img, source.image)
    async with (
        read_only_uri(source.image, scratch, source.cache) as uri,
        await NbdClient.connect(uri) as client,
    ):
        chunks = _chunks(client, source.virtual_size, extents)
        try:
            yield RawStream(source.virtual_size, chunks)
        finally:
            await chunks.aclose()
