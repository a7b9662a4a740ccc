"""Write known data through an NBD export with libnbd, and the same into a raw file."""

from __future__ import annotations

import os
from pathlib import Path

import nbd


def pattern(seed: int, size: int) -> bytes:
    return bytes((seed * 131 + i * 7) % 251 for i in range(256)) * (size // 256)


def write_through_nbd(uri: str, writes: list[tuple[int, bytes]]) -> None:
    handle = nbd.NBD()
    handle.connect_uri(uri)
    try:
        for offset, data in writes:
            handle.pwrite(data, offset)
        handle.flush()
    finally:
        handle.shutdown()


def expected_raw(path: Path, size: int, writes: list[tuple[int, bytes]]) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset, data in writes:
            handle.seek(offset)
            handle.write(data)
        os.fsync(handle.fileno())
    return path
