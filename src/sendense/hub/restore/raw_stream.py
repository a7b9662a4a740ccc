"""A restore point's disk as a stream of raw bytes (the HTTP download).

The chain is read through a read-only qemu-nbd on a Unix socket (the
repository's image reader), with several 4 MiB reads in flight and the answers
passed on in order. Chunks where
`qemu-img map` finds no data (holes, zero clusters) go out as zeroes, unread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sendense.hub.repository.image_reader import read_only_uri
from sendense.hub.restore.conversion import DiskSource
from sendense.nbd.client import Data, NbdClient
from sendense.nbd.protocol import CMD_READ
from sendense.nbd.qemu_img import Extent, QemuImg

CHUNK = 4 << 20
IN_FLIGHT = 8
_ZERO = bytes(CHUNK)


@dataclass(frozen=True)
class RawStream:
    size: int
    chunks: AsyncGenerator[bytes, None]


async def _chunks(client: NbdClient, size: int, extents: list[Extent]) -> AsyncGenerator[bytes]:
    pending: deque[asyncio.Future[Data] | bytes] = deque()
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
        await asyncio.gather(
            *(i for i in pending if isinstance(i, asyncio.Future)), return_exceptions=True
        )


async def _ready(item: asyncio.Future[Data] | bytes) -> bytes:
    data = item if isinstance(item, bytes) else await item
    return data if isinstance(data, bytes) else bytes(data)  # what the response takes


@asynccontextmanager
async def raw_stream(
    source: DiskSource, scratch: Path, qemu_img: QemuImg
) -> AsyncIterator[RawStream]:
    """The disk's bytes, from offset 0 to its virtual size; the read-only server
    stops when the context ends, whether or not the stream was read to its end."""
    extents = await asyncio.to_thread(qemu_img.map, source.image)
    async with (
        read_only_uri(source.image, scratch, source.cache) as uri,
        await NbdClient.connect(uri) as client,
    ):
        chunks = _chunks(client, source.virtual_size, extents)
        try:
            yield RawStream(source.virtual_size, chunks)
        finally:
            await chunks.aclose()
