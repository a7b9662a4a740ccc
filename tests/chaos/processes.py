"""Which tunnel processes exist, read from /proc and `ss`: the node's ssh, and the
hub's sshd with its per-connection sessions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.rig.procs import pids_with
from tests.rig.site import Site


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = parent(pid)
    return False


def tunnel_port_holders(port: int) -> set[int]:
    """Processes holding an accepted connection or a listener on the hub's tunnel port."""
    out = subprocess.run(
        ["ss", "-Htnpa", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def sshd_listener(site: Site) -> int | None:
    try:
        return int((site.hub.data_dir / "tunnel" / "sshd.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stray_sshd(site: Site) -> list[int]:
    """sshd processes on the hub's tunnel port that are not its current sshd or one
    of that sshd's sessions."""
    listener = sshd_listener(site)
    held = tunnel_port_holders(site.hub.tunnel_port)
    return sorted(p for p in held if listener is None or not descends_from(p, listener))


def stray_ssh(site: Site) -> list[int]:
    """The node's ssh processes other than the one its tunnel supervisor runs now."""
    current = site.node.tunnel_status().get("ssh_pid")
    return [p for p in pids_with(str(site.node.data_dir), name="ssh") if p != current]
