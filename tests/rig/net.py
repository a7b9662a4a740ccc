"""Free ports on loopback for tests, so parallel runs and a live hub never collide."""

from __future__ import annotations

import random
import socket


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_range(count: int) -> tuple[int, int]:
    """`count` consecutive bindable ports, away from the default pool 10100-10200."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 30000 - count)
        if all(bindable(p) for p in range(first, first + count)):
            return first, first + count - 1
    raise RuntimeError(f"no {count} consecutive free ports")
