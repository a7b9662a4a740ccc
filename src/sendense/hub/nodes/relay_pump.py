"""The byte copy of a node's NBD relay: stdin and stdout to one Unix socket.

Standalone on purpose (standard library only, no sendense import): the hub copies
this file into its runtime directory beside the relay script (nbd_relay.py),
which validates the session's `nbd PORT` and runs
`/usr/bin/python3 -I -S relay_pump.py <the node's directory>/<PORT>.sock` as the
node's own system user, which can neither enter the hub's data directory nor
read the package wherever it is installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import stat
import sys
import threading

CHUNK = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python 3.10+ names it; spelled out for -S)


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def _wait(fd: int, event: int) -> None:
    poller = select.poll()
    poller.register(fd, event)
    poller.poll()


def pump(source: int, sink: int) -> None:
    """Copy until EOF through one reused buffer: the replies, from the export to
    sshd's stdout pipe. Not splice(2) that way: data spliced into sshd's stdout
    pipe sat there until sshd woke for something else (its 10 s keepalive),
    stalling every other handshake by 10 s. Either side may be non-blocking."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while True:
        try:
            count = os.readv(source, [buffer])
        except BlockingIOError:
            _wait(source, select.POLLIN)
            continue
        if not count:
            return
        done = 0
        while done < count:
            try:
                done += os.write(sink, view[done:count])
            except BlockingIOError:
                _wait(sink, select.POLLOUT)


def splice_pump(source: int, sink: int) -> None:
    """Move until EOF from sshd's stdin pipe to the export's socket without a copy
    through Python: the writes. A full backup's relay took 1.1 s of CPU per GiB
    written with `pump` and half that with splice; the backup through the tunnel
    went from 5.2 s to 4.6 s (docs/decisions.md).

    The socket must be non-blocking: splice holds the pipe's lock while it sends,
    and a blocking send to an export that does not read (a stalled qemu-nbd)
    would hold it for as long, so sshd's next write to the pipe would wait on
    that lock however non-blocking its end is, and with it every other channel
    of the node's session: the hub could no longer reach the node's API to
    cancel the stalled job."""
    while True:
        try:
            # Blocking on the pipe (splice waits for data without its lock held),
            # not on the socket: a full socket says EAGAIN.
            if not os.splice(source, sink, CHUNK, flags=os.SPLICE_F_MOVE):
                return
        except BlockingIOError:
            _wait(sink, select.POLLOUT)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: relay_pump.py SOCKET (from the NBD relay)", file=sys.stderr)
        return 2
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(argv[1])
    except OSError as exc:
        print(f"sendense: the export's socket refused: {exc.strerror}", file=sys.stderr)
        return 1
    conn.setblocking(False)  # see splice_pump

    def upstream() -> None:
        try:
            (splice_pump if _is_pipe(0) else pump)(0, conn.fileno())
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
