"""Block checksums of transferred data: BLAKE3 over fixed blocks, with a precomputed
digest for all-zero blocks (sparse disks hash for free).

The disk checksum is BLAKE3 over the sequence of (offset, length, block digest)
in offset order, so it does not depend on the order blocks were copied in, and a
verifier can recompute it from the image by reading the same blocks.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from blake3 import blake3

ALGORITHM = "blake3-blocks"


@lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    return blake3(bytes(length)).digest()


def block_digest(data: bytes, zero_block: bytes | None = None) -> bytes:
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
