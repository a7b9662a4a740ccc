"""The system user a node's tunnel logs in as on the hub: the one place that
names it for the exports (exports.py).

Each node logs in as its own unprivileged user (`NodeInfo.system_user`, made by
nodes/accounts.py); its sshd sessions, and so its NBD relay, run as that user, so
its export sockets' directory belongs to that user alone. A job that names no
node (the seed's `POST /api/v1/jobs` with no node enrolled) has its exports in
the hub's own directory, reached by the hub's user only.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from typing import Protocol

from sendense.common.errors import Unavailable

HUB_DIRECTORY = "hub"  # never a node user's name: those start with sendense-n-


class EnrolledNode(Protocol):
    """What the exports need of a node (hub.nodes' NodeInfo; the repository
    package does not import hub.nodes)."""

    @property
    def name(self) -> str: ...

    @property
    def system_user(self) -> str | None: ...

    @property
    def system_uid(self) -> int | None: ...


@dataclass(frozen=True)
class NodeLogin:
    node: str | None  # None: a job that names no node
    user: str
    uid: int
    gid: int

    @property
    def directory(self) -> str:
        """The name of its export sockets' directory."""
        return HUB_DIRECTORY if self.node is None else self.user


def node_login(node: EnrolledNode | None) -> NodeLogin:
    if node is None:
        entry = pwd.getpwuid(os.geteuid())
        return NodeLogin(None, entry.pw_name, entry.pw_uid, entry.pw_gid)
    if node.system_user is None or node.system_uid is None:
        raise Unavailable(
            f"node {node.name!r} has no system user on this hub (revoked, or the hub "
            "does not run as root): no export can be opened for it"
        )
    try:
        gid = pwd.getpwuid(node.system_uid).pw_gid
    except KeyError:
        raise Unavailable(f"node {node.name!r}'s system user is gone from this machine") from None
    return NodeLogin(node.name, node.system_user, node.system_uid, gid)
