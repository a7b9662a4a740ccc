"""One NBD connection of a node, from its tunnel to its export's Unix socket.

sshd runs this as the forced command of the node's key (authorized_keys
`command="... nbd_relay.py DIR"`), as the node's login user, for each session
the node opens with `nbd PORT` (node/forwards.py): it connects to DIR/PORT.sock,
the node's own export directory, and moves bytes both ways until either side
ends. A node names a port, never a path: it reaches its own exports only.

sshd's sockets forwarding (`ssh -L /local:/remote`) cannot be confined that way
(PermitOpen, permitopen, and the TCP switch it rides on govern TCP and socket
paths together: docs/decisions.md), hence this relay. Standard library only,
started with `python -I -S`: it runs for every NBD connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import sys
import threading

CHUNK = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python 3.10+ names it; spelled out for -S)


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def pump(source: int, sink: int) -> None:
    """Copy until EOF through one reused buffer. Not splice(2): out of sshd's pipe it
    ran slower (159 MB/s against 196 through the tunnel), and into sshd's stdout
    pipe the data sat there until sshd woke for something else (its 10 s
    keepalive), stalling every other handshake by 10 s."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while count := os.readv(source, [buffer]):
        done = 0
        while done < count:
            done += os.write(sink, view[done:count])


def port_of(command: str) -> int:
    words = command.split()
    if len(words) != 2 or words[0] != "nbd" or not words[1].isdigit():
        raise ValueError(f"expected `nbd PORT`, got {command[:64]!r}")
    port = int(words[1])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return port


def relay_command(directory: str) -> str:
    """The forced command for a node whose export sockets are in `directory`."""
    parts = [sys.executable, "-I", "-S", os.path.abspath(__file__), directory]
    for part in parts:
        if not part or any(c in part for c in '"\\ \t\n'):
            raise ValueError(f"{part!r} cannot go in an authorized_keys command")
    return " ".join(parts)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: nbd_relay.py DIRECTORY (as a forced command)", file=sys.stderr)
        return 2
    try:
        port = port_of(os.environ.get("SSH_ORIGINAL_COMMAND", ""))
    except ValueError as exc:
        print(f"sendense: {exc}", file=sys.stderr)
        return 2
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(os.path.join(argv[1], f"{port}.sock"))
    except OSError as exc:
        print(f"sendense: no export of this node on port {port}: {exc.strerror}", file=sys.stderr)
        return 1

    def upstream() -> None:
        try:
            pump(0, conn.fileno())
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)

    for fd in (0, 1):  # sshd's pipes: 64 KiB by default, a wake-up every other packet
        if _is_pipe(fd):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)
    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    try:
        pump(conn.fileno(), 1)
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
