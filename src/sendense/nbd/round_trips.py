"""The round trips measured to each path, remembered across writers.

A writer measures its path's round trip before it decides on further
connections (writer.py, `spread_from_rtt`). On a loaded node that measure
includes the wait of the node's own event loop and of the ssh processes for a
turn: a hub on the same LAN read as 4 ms with ten backups running, and every
disk opened four ssh connections, each with its key exchange, where one would
do. The least round trip seen on a path in the last minutes is its distance;
what a moment's load adds is not (TCP keeps a windowed minimum for the same
reason, Linux's `tcp_min_rtt_wlen`, 300 s).

A path is named by the caller: the node names its tunnel by the hub and the time
the tunnel came up (node/forwards.py `path_key`). `path_of` names one from a URI
alone: a Unix socket's directory, or the host of a direct NBD address.
"""

from __future__ import annotations

import os
import time
from collections import deque

from sendense.nbd.protocol import parse_uri

WINDOW_S = 300.0


def path_of(uri: str) -> str:
    host, port, _export = parse_uri(uri)
    return f"unix:{os.path.dirname(host)}" if port == 0 else f"tcp:{host}"


class RoundTrips:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: dict[str, deque[tuple[float, float]]] = {}

    def least(self, path: str, measured: float, now: float | None = None) -> float:
        """Remember `measured` for `path`; the least round trip on `path` within
        the window, this one included."""
        now = time.monotonic() if now is None else now
        seen = self._seen.setdefault(path, deque())
        while seen and seen[0][0] < now - self.window_s:
            seen.popleft()
        # Only the ones that can still be the least are kept: at most a few.
        while seen and seen[-1][1] >= measured:
            seen.pop()
        seen.append((now, measured))
        return seen[0][1]
