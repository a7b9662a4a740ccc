"""One NBD connection of a node, from its tunnel to its export's Unix socket.

sshd runs the relay as the forced command of the node's key (authorized_keys
`command="/bin/sh <relay> <the node's export directory>"`), as the node's own
system user, for each session the node opens with `nbd PORT`
(node/forwards.py). It accepts nothing else, and joins the session's stdin and
stdout to `<directory>/PORT.sock` (relay_pump.py): a node names a port, never a path,
and reaches its own exports only; its directory is its user's alone (0700), so
another node's user cannot enter it whatever it runs.

The relay is a POSIX sh script the hub writes at each start (root's, 0755) into
its runtime directory, beside the sockets, with a copy of relay_pump.py
(standalone, run by the system's `/usr/bin/python3 -I -S`): it runs as an
unprivileged user that cannot enter the hub's 0700 data directory nor import
this package from wherever it is installed; the writes move by splice(2).
socat in its place carried a full backup through the tunnel 7% slower
(docs/decisions.md). sshd's sockets
forwarding (`ssh -L /local:/remote`) cannot be confined to a directory
(docs/decisions.md), hence a relay at all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sendense.hub.nodes import relay_pump

RELAY_NAME = "relay"  # beside the node users' directories; never a user's name
PUMP_NAME = "relay_pump.py"
PYTHON = "/usr/bin/python3"  # the system's: no venv, no site-packages (-I -S)

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
exec {PYTHON} -I -S "${{0%/*}}/{PUMP_NAME}" "$dir/$port.sock"
"""


def write_relay(directory: Path) -> Path:
    """The relay and its pump in `directory` (made or replaced), root's (the
    hub's), 0755 and 0644: every node user runs them, none can change them."""
    pump = directory / f".{PUMP_NAME}.tmp"
    shutil.copyfile(relay_pump.__file__, pump)
    pump.chmod(0o644)
    os.replace(pump, directory / PUMP_NAME)
    path = directory / RELAY_NAME
    tmp = directory / f".{RELAY_NAME}.tmp"
    tmp.write_text(SCRIPT)
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path


def relay_command(relay: Path, directory: Path) -> str:
    """The forced command of a node whose export sockets are in `directory`: sshd
    runs it with the user's shell, which execs /bin/sh (the runtime directory may
    be mounted noexec) on the relay."""
    parts = ["exec", "/bin/sh", str(relay), str(directory)]
    for part in parts:
        if not part or any(c in part for c in '"\\ \t\n'):
            raise ValueError(f"{part!r} cannot go in an authorized_keys command")
    return " ".join(parts)
