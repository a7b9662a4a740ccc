"""The loopback addresses that stand for the node and the hub, the ports the tunnel
must permit, and the socket helpers: a free port, an NBD greeting through the
tunnel, a banner server that tells whether a connection got through."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

NODE_IP = "127.0.0.2"  # what the node sees: the hub's ports on its own loopback
HUB_IP = "127.0.0.1"
# The hub's NBD pool and API: what the tunnel must permit, and nothing else.
NBD_POOL = range(10100, 10201)
HUB_API_PORT = 8082


def free_port(host: str = HUB_IP) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def probe_nbd(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until an NBD greeting arrives on host:port (through the tunnel if any)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1) as s:
            s.settimeout(2)
            if s.recv(8) == b"NBDMAGIC":
                return
        time.sleep(0.05)
    raise RuntimeError(f"no NBD greeting on {host}:{port}")


class Banner:
    """A thread that greets every connection with a fixed banner: stands in for the
    node's API (reverse forward) and for a port the tunnel must refuse (PostgreSQL)."""

    def __init__(self, name: str) -> None:
        self.name, self.accepted = name, 0
        self.sock = socket.socket()
        self.sock.bind((HUB_IP, 0))
        self.sock.listen()
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(f"hello from {self.name}".encode())

    def close(self) -> None:
        self.sock.close()


def read_banner(host: str, port: int) -> bytes:
    """What a client gets on host:port: the banner, or b'' if the tunnel closed it."""
    try:
        with socket.create_connection((host, port), 3) as s:
            s.settimeout(3)
            return s.recv(100)
    except OSError as exc:
        return f"<{type(exc).__name__}>".encode()


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)
