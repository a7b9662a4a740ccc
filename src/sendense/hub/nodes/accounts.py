"""The system users node tunnels log in as: one unprivileged user per node on the
hub's machine (`sendense-n-<id>`, no home, /bin/sh to run its NBD relay, primary
group the hub's `tunnel_group`), so a node's session never runs as root and one
node's key cannot log in as another node.

Each user is recorded in `node_accounts` (this hub's id, the node) before
`useradd` runs: a hub that crashed half way finds its record at the next start,
and `reconcile` removes the users this hub made for nodes that are revoked or
gone; a user this hub did not record is never touched. Only root makes users:
a hub run as another user refuses to enroll (docs/security.md).
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Callable, Mapping

from sqlalchemy import delete, select

from sendense.common.errors import Conflict, SendenseError, Unavailable
from sendense.common.processes import run_tool
from sendense.hub.db.database import Database
from sendense.hub.db.models import NodeAccount

log = logging.getLogger(__name__)
USER_PREFIX = "sendense-n-"
# sshd runs a session's command, the key's forced one included, as `SHELL -c
# COMMAND`: with nologin no NBD relay could run. The key's forced command (and
# AllowGroups, a password of "*") leave the shell nothing else to run.
SHELL = "/bin/sh"
NO_SUCH_USER = 6  # userdel's exit code


def node_user_name(node_id: str) -> str:
    """The system user of the node with this id (useradd allows 32 characters)."""
    return USER_PREFIX + node_id[:12]


def system_uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


class NodeAccounts:
    def __init__(self, db: Database, group: str) -> None:
        self.db = db
        self.group = group
        self.hub_id = db.owner or "hub"

    def require_root(self) -> None:
        """Enrollment's first check, before the pairing code is spent."""
        if os.geteuid() != 0:
            user = pwd.getpwuid(os.geteuid()).pw_name
            raise Unavailable(
                f"the hub runs as {user!r}, not root: it cannot make the node's own system "
                "user, so it enrolls no node (run the hub as root, as its unit does)"
            )

    def recorded(self) -> dict[str, str]:
        """The users this hub made: user -> node id."""
        with self.db.session() as s:
            rows = s.execute(
                select(NodeAccount.user_name, NodeAccount.node_id).where(
                    NodeAccount.hub_id == self.hub_id
                )
            )
            return {user: node_id for user, node_id in rows}

    def uids(self) -> dict[str, int]:
        with self.db.session() as s:
            rows = s.execute(
                select(NodeAccount.user_name, NodeAccount.uid).where(
                    NodeAccount.hub_id == self.hub_id, NodeAccount.uid.is_not(None)
                )
            )
            return {user: uid for user, uid in rows if uid is not None}

    def ensure(self, node_id: str, user: str) -> int:
        """The node's user exists (made now if need be); its uid."""
        with self.db.session() as s:
            ours = s.get(NodeAccount, (self.hub_id, user)) is not None
            if not ours:
                s.add(NodeAccount(hub_id=self.hub_id, user_name=user, node_id=node_id))
        uid = system_uid(user)
        if uid is not None and not ours:
            self._forget(user)
            raise Conflict(f"a system user {user!r} exists already and is not this hub's")
        if uid is None:
            self._ensure_group()
            run_tool(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    SHELL,
                    "--gid",
                    self.group,
                    "--no-user-group",
                    # Not "!" (locked): sshd refuses a locked account even for a key.
                    # No password can match "*".
                    "--password",
                    "*",
                    "--comment",
                    "Sendense node tunnel",
                    user,
                ],
                timeout=60,
            )
            uid = system_uid(user)
            if uid is None:
                raise Unavailable(f"useradd made no user {user!r}")
            log.info("made the system user %s uid=%d for node %s", user, uid, node_id)
        elif pwd.getpwuid(uid).pw_shell != SHELL:  # made with nologin, before the relay
            run_tool(["usermod", "--shell", SHELL, user], timeout=60)
        with self.db.session() as s:
            row = s.get(NodeAccount, (self.hub_id, user))
            if row is not None:
                row.uid = uid
        return uid

    def remove(self, user: str) -> None:
        """Remove a user this hub made (its sessions ended first: userdel refuses a
        user with processes), and its record."""
        if os.geteuid() == 0 and system_uid(user) is not None:
            run_tool(["userdel", user], timeout=60, ok=(0, NO_SUCH_USER))
            log.warning("removed the system user %s", user)
        self._forget(user)

    def reconcile(
        self, active: Mapping[str, str], before_removal: Callable[[str, int], None]
    ) -> dict[str, int]:
        """`active`: user -> node id of every node that may log in. Users this hub
        made for other nodes (revoked, gone) are removed, `before_removal(user,
        uid)` first; the active ones are made where missing. Their uids."""
        for user, node_id in self.recorded().items():
            if active.get(user) != node_id:
                uid = system_uid(user)
                if uid is not None:
                    before_removal(user, uid)
                self.remove(user)
        uids: dict[str, int] = {}
        if os.geteuid() != 0:
            if active:
                log.error("the hub does not run as root: its nodes' system users cannot be made")
            return uids
        for user, node_id in active.items():
            try:
                uids[user] = self.ensure(node_id, user)
            except SendenseError as exc:  # a name taken, useradd failing
                log.error("node %s cannot log in: %s", node_id, exc.message)
        return uids

    def _forget(self, user: str) -> None:
        with self.db.session() as s:
            s.execute(
                delete(NodeAccount).where(
                    NodeAccount.hub_id == self.hub_id, NodeAccount.user_name == user
                )
            )

    def _ensure_group(self) -> None:
        try:
            grp.getgrnam(self.group)
        except KeyError:
            run_tool(["groupadd", "--system", self.group], timeout=60)
            log.info("made the system group %s for node tunnels", self.group)
