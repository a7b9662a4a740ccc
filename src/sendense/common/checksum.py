"""Block checksums of transferred data: BLAKE3 over fixed blocks, with a precomputed
digest for all-zero blocks (sparse disks hash for free).

The disk checksum is BLAKE3 over the sequence of (offset, length, block digest)
in offset order, so it does not depend on the order blocks were copied in, and a
verifier can recompute it from the image by reading the same blocks.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from functools import lru_cache

from blake3 import blake3

ALGORITHM = "blake3-blocks"


Area = tuple[int, int]
_AREA = struct.Struct(">QQ")


def blocks(areas: Iterable[Area], size: int) -> Iterator[Area]:
    """Each area cut into blocks of at most `size` bytes, from its start: the blocks
    the node hashes, and the blocks a verifier reads again."""
    for start, length in areas:
        end = start + length
        offset = start
        while offset < end:
            step = min(size, end - offset)
            yield offset, step
            offset += step


def merge_areas(areas: Iterable[Area]) -> list[Area]:
    """Sorted, with overlapping and touching areas joined."""
    merged: list[Area] = []
    for start, length in sorted(areas):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            last_start, last_length = merged[-1]
            merged[-1] = (last_start, max(last_length, start + length - last_start))
        else:
            merged.append((start, length))
    return merged


def pack_areas(areas: Iterable[Area]) -> bytes:
    """The areas a backup read, compact for the database (16 bytes an area, zlib)."""
    return zlib.compress(b"".join(_AREA.pack(start, length) for start, length in areas))


def unpack_areas(packed: bytes) -> list[Area]:
    raw = zlib.decompress(packed)
    return [_AREA.unpack_from(raw, i) for i in range(0, len(raw), _AREA.size)]


@lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    return blake3(bytes(length)).digest()


def block_digest(data: bytes | bytearray, zero_block: bytes | None = None) -> bytes:
    if zero_block is not None and len(data) == len(zero_block) and data == zero_block:
        return zero_digest(len(data))
    return blake3(data).digest()


class BlockHasher:
    def __init__(self) -> None:
        self._blocks: list[tuple[int, int, bytes]] = []

    def add(self, offset: int, length: int, digest: bytes) -> None:
        self._blocks.append((offset, length, digest))

    def hexdigest(self) -> str:
        outer = blake3()
        for offset, length, digest in sorted(self._blocks):
            outer.update(struct.pack(">QQ", offset, length))
            outer.update(digest)
        return f"{ALGORITHM}:{outer.hexdigest()}"
