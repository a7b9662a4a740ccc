"""The seed's multi-disk targets string, shared by hub (builds it) and node (parses it).

    2000:nbd://127.0.0.1:10100/pgtest1-disk0,2001:nbd://127.0.0.1:10101/pgtest1-disk1

Keys are the real VMware device keys; each target is one qemu-nbd export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sendense.common.errors import InvalidInput

_EXPORT = r"[A-Za-z0-9._-]{1,128}"
_TARGET = re.compile(
    rf"^(\d{{1,6}}):nbd://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{{1,5}})/({_EXPORT})$"
)


@dataclass(frozen=True)
class NbdTarget:
    disk_key: int
    host: str
    port: int
    export: str

    @property
    def uri(self) -> str:
        return f"nbd://{self.host}:{self.port}/{self.export}"

    def __str__(self) -> str:
        return f"{self.disk_key}:{self.uri}"


def format_targets(targets: list[NbdTarget]) -> str:
    return ",".join(str(t) for t in targets)


def parse_targets(text: str) -> list[NbdTarget]:
    """Parse and validate; every problem is an InvalidInput naming the bad part."""
    if not text.strip():
        raise InvalidInput("nbd_targets is empty")
    targets: list[NbdTarget] = []
    for part in text.split(","):
        match = _TARGET.match(part.strip())
        if not match:
            raise InvalidInput(
                f"nbd_targets entry {part.strip()!r} is not KEY:nbd://HOST:PORT/EXPORT"
            )
        key, host, port, export = match.groups()
        if not 1 <= int(port) <= 65535:
            raise InvalidInput(f"nbd_targets entry {part.strip()!r} has port out of range")
        targets.append(NbdTarget(int(key), host, int(port), export))
    keys = [t.disk_key for t in targets]
    if len(set(keys)) != len(keys):
        raise InvalidInput("nbd_targets names a disk key twice")
    return targets
