"""System users and groups the hub makes for node tunnels: a test's hub gets a
group of its own, and everything in it goes when the test ends."""

from __future__ import annotations

import grp
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

KEYS_ROOT = Path("/run/sendense")


def unique_group() -> str:
    return f"sdt-{uuid.uuid4().hex[:10]}"


def users_of(group: str) -> list[pwd.struct_passwd]:
    """The users whose primary group is `group` (the node users a hub made)."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return []
    return [entry for entry in pwd.getpwall() if entry.pw_gid == gid]


def remove_group(group: str, hub_data_dir: Path) -> None:
    """The group's users, the group, and the hub's keys directory."""
    for entry in users_of(group):
        subprocess.run(["userdel", "--force", entry.pw_name], capture_output=True, check=False)
    try:
        grp.getgrnam(group)
    except KeyError:
        pass
    else:
        subprocess.run(["groupdel", group], capture_output=True, check=True)
    try:
        hub_id = (hub_data_dir / "hub-id").read_text().strip()
    except OSError:
        return
    if hub_id:
        shutil.rmtree(KEYS_ROOT / hub_id, ignore_errors=True)


def group_exists(group: str) -> bool:
    try:
        grp.getgrnam(group)
    except KeyError:
        return False
    return True
