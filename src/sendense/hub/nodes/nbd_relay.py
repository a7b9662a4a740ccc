"""One NBD connection of a node, from its tunnel to its export's Unix socket.

sshd runs the relay as the forced command of the node's key (authorized_keys
`command="/bin/sh <relay> <the node's export directory>"`), as the node's own
system user, for each session the node opens with `nbd PORT`
(node/forwards.py). It accepts nothing else, and joins the session's stdin and
stdout to `<directory>/PORT.sock` with socat: a node names a port, never a path,
and reaches its own exports only; its directory is its user's alone (0700), so
another node's user cannot enter it whatever it runs.

The relay is a POSIX sh script the hub writes at each start (root's, 0755) into
its runtime directory, beside the sockets: it runs as an unprivileged user that
cannot enter the hub's 0700 data directory nor import this package from wherever
it is installed. sshd's sockets forwarding (`ssh -L /local:/remote`) cannot be
confined to a directory (docs/decisions.md), hence a relay at all.
"""

from __future__ import annotations

import os
from pathlib import Path

RELAY_NAME = "relay"  # beside the node users' directories; never a user's name
# socat's buffer: its default 8 KiB costs a system call per 8 KiB each way.
BUFFER = 1 << 20

SCRIPT = f"""#!/bin/sh
# Sendense: a node's NBD relay, written by the hub at each start. sshd runs it as
# the forced command of the node's key, as the node's own user:
#   /bin/sh relay DIRECTORY
# It accepts only `nbd PORT` and joins stdin and stdout to DIRECTORY/PORT.sock.
set -f
dir=$1
port=${{SSH_ORIGINAL_COMMAND#nbd }}
case $SSH_ORIGINAL_COMMAND in
"nbd $port") ;;
*) echo "sendense: expected \\`nbd PORT\\`" >&2; exit 2 ;;
esac
case $port in
'' | *[!0-9]* | ??????*) echo "sendense: expected \\`nbd PORT\\`" >&2; exit 2 ;;
esac
if [ ! -S "$dir/$port.sock" ]; then
    echo "sendense: no export of this node on port $port" >&2
    exit 1
fi
exec socat -b {BUFFER} -t 5 STDIO "UNIX-CONNECT:$dir/$port.sock"
"""


def write_relay(directory: Path) -> Path:
    """The relay in `directory` (made or replaced), root's (the hub's) and 0755:
    every node user runs it, none can change it."""
    path = directory / RELAY_NAME
    tmp = directory / f".{RELAY_NAME}.tmp"
    tmp.write_text(SCRIPT)
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path


def relay_command(relay: Path, directory: Path) -> str:
    """The forced command of a node whose export sockets are in `directory`. Run by
    /bin/sh: the runtime directory may be mounted noexec."""
    parts = ["/bin/sh", str(relay), str(directory)]
    for part in parts:
        if not part or any(c in part for c in '"\\ \t\n'):
            raise ValueError(f"{part!r} cannot go in an authorized_keys command")
    return " ".join(parts)
