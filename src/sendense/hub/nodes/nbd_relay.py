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
import os
import socket
import stat
import sys
import threading

CHUNK = 1 << 20


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def pump(source: int, sink: int) -> None:
    """Copy until EOF: spliced (no copy through this process) out of a pipe (sshd's
    stdin, the node's writes), else read and written. Data spliced into sshd's
    stdout pipe sat there until sshd woke for something else (up to its 10 s
    keepalive), so that direction is written."""
    if _is_pipe(source):
        while os.splice(source, sink, CHUNK) > 0:
            pass
        return
    while data := os.read(source, CHUNK):
        view = memoryview(data)
        while view:
            view = view[os.write(sink, view) :]


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

    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    try:
        pump(conn.fileno(), 1)
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
