"""The system user a node's tunnel logs in as on the hub.

Its sshd session reaches the node's export sockets (exports.py), so their
directory belongs to that user alone. Today every node logs in as the hub's own
user (`TunnelSshd.user`); when nodes get users of their own (issue 12, point 6),
`node_login` is the one place that changes.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeLogin:
    node: str | None  # None: a job that names no node (the seed's POST /api/v1/jobs)
    user: str
    uid: int
    gid: int


def node_login(node: str | None) -> NodeLogin:
    entry = pwd.getpwuid(os.geteuid())  # one login for every node until point 6 lands
    return NodeLogin(node, entry.pw_name, entry.pw_uid, entry.pw_gid)
