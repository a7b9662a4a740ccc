"""Nodes: pairing codes, enrollment, revocation, and the tunnel's view of them.

A pairing code is single use and expires (15 minutes by default); only its
digest is stored. Enrollment binds a node name to its SSH public key (one key,
one node: the node signs the enrollment with its private key, and a key's
fingerprint is unique), names the node's system user, gives it a reverse port
for its API, and keeps the node's API token sealed.
"""

from __future__ import annotations

import builtins
import logging
import secrets
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sendense.common.errors import Conflict, InvalidInput, NotFound, Unauthorized
from sendense.common.names import safe_label
from sendense.common.sshkeys import enrollment_challenge, pairing_digest
from sendense.common.sshkeys import fingerprint as key_fingerprint
from sendense.common.sshkeys import verify as verify_signature
from sendense.common.tls import display_fingerprint
from sendense.hub.auth.secrets import SecretBox
from sendense.hub.db.database import Database
from sendense.hub.db.models import Node, NodeAccount, PairingCode, new_id, utcnow
from sendense.hub.nodes.accounts import node_user_name

log = logging.getLogger(__name__)
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


@dataclass(frozen=True)
class NodeInfo:
    id: str
    name: str
    key_fingerprint: str | None
    reverse_port: int | None
    revoked: bool
    connected: bool
    last_seen: datetime | None
    # The system user its tunnel logs in as, and that user's uid on this hub's
    # machine (None until this hub made it, and once the node is revoked).
    system_user: str | None = None
    system_uid: int | None = None


@dataclass(frozen=True)
class Pairing:
    """A pairing code (shown once) and the command that enrolls a node with it."""

    code: str
    expires_at: datetime
    enroll_command: str


def enroll_command(api_address: str, host_key_fingerprint: str, cert_sha256: str | None) -> str:
    """The `sendense node enroll` line an operator runs on the node: the hub's API
    address and both pins (the tunnel's host key, the API certificate's SHA-256;
    None: plain HTTP, which enrollment refuses). Never the code: it is asked for
    (any local user can read a process's arguments)."""
    argv = ["sendense", "node", "enroll", "--hub", api_address]
    argv += ["--hub-fingerprint", host_key_fingerprint]
    if cert_sha256 is not None:
        argv += ["--hub-cert-sha256", display_fingerprint(cert_sha256)]
    return shlex.join(argv)


def _info(row: Node, uid: int | None = None) -> NodeInfo:
    return NodeInfo(
        row.id,
        row.name,
        row.key_fingerprint,
        row.reverse_port,
        row.revoked,
        row.connected,
        row.last_seen,
        row.system_user,
        uid,
    )


class NodeService:
    def __init__(
        self, db: Database, box: SecretBox, reverse_ports: tuple[int, int], pairing_minutes: int
    ) -> None:
        self.db = db
        self.box = box
        self.reverse_ports = reverse_ports
        self.pairing_minutes = pairing_minutes

    def pairing_code(self) -> tuple[str, datetime]:
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(12))
        code = "-".join(raw[i : i + 4] for i in range(0, 12, 4))
        expires = utcnow() + timedelta(minutes=self.pairing_minutes)
        with self.db.session() as s:
            s.add(PairingCode(code_hash=pairing_digest(code), expires_at=expires))
        return code, expires

    def check_enrollment(
        self, code: str, name: str, public_key: str, signature: str | None, hub_cert: str | None
    ) -> str:
        """Everything `enroll` checks, nothing written (the code stays unused). The
        node's id: a revoked node's of that name (enrolled again with a new key),
        else a new one."""
        fingerprint = self._proven_key(code, name, public_key, signature, hub_cert)
        with self.db.session() as s:
            _, revoked = self._check(s, code, name, fingerprint)
            return revoked.id if revoked is not None else new_id()

    def enroll(
        self,
        code: str,
        name: str,
        public_key: str,
        signature: str | None,
        api_token: str,
        hub_cert: str | None,
        node_id: str | None = None,
    ) -> NodeInfo:
        """`signature`: the node's, over `enrollment_challenge` with `hub_cert` (the
        SHA-256 of the certificate the hub's API serves). `node_id`: the id the
        node's system user was named after (`check_enrollment`'s). A revoked node
        of that name is enrolled again, its vCenters and history kept: the way to
        give a node a new key."""
        fingerprint = self._proven_key(code, name, public_key, signature, hub_cert)
        sealed = self.box.seal(api_token)
        with self.db.session() as s:
            pairing, revoked = self._check(s, code, name, fingerprint)
            if revoked is not None:
                if node_id not in (None, revoked.id):
                    raise Conflict(f"node {name!r} changed during its enrollment: try again")
                return self._reenroll(s, pairing, revoked, public_key, fingerprint, sealed)
            node_id = node_id or new_id()
            taken = set(s.scalars(select(Node.reverse_port)).all())
            port = next(
                (
                    p
                    for p in range(self.reverse_ports[0], self.reverse_ports[1] + 1)
                    if p not in taken
                ),
                None,
            )
            if port is None:
                raise Conflict("no reverse port left for another node")
            node = Node(
                id=node_id,
                name=name,
                public_key=public_key.strip(),
                key_fingerprint=fingerprint,
                system_user=node_user_name(node_id),
                reverse_port=port,
                api_token_sealed=sealed,
            )
            s.add(node)
            try:
                s.flush()  # the unique name, key and port: a racing enrollment loses here
            except IntegrityError as exc:
                raise Conflict(f"node {name!r} or its key is enrolled already") from exc
            pairing.used_at = utcnow()
            pairing.node_id = node.id
            info = _info(node)
        log.info("node enrolled name=%s key=%s reverse_port=%d", name, fingerprint, port)
        return info

    @staticmethod
    def _reenroll(
        s: Session, pairing: PairingCode, node: Node, public_key: str, fingerprint: str, sealed: str
    ) -> NodeInfo:
        node.public_key = public_key.strip()
        node.key_fingerprint = fingerprint  # the old key is forgotten with its node's
        node.api_token_sealed = sealed
        node.system_user = node.system_user or node_user_name(node.id)
        node.revoked = False
        node.connected = False
        try:
            s.flush()
        except IntegrityError as exc:
            raise Conflict(f"node {node.name!r} or its key is enrolled already") from exc
        pairing.used_at = utcnow()
        pairing.node_id = node.id
        log.info("node enrolled again name=%s key=%s", node.name, fingerprint)
        return _info(node)

    @staticmethod
    def _proven_key(
        code: str, name: str, public_key: str, signature: str | None, hub_cert: str | None
    ) -> str:
        """The key's fingerprint, once the node proved it holds its private key."""
        label = safe_label(name, 64)
        if label != name:
            raise InvalidInput(f"node name {name!r}: use letters, digits, '.', '_' and '-'")
        fingerprint = key_fingerprint(public_key)
        verify_signature(
            public_key, enrollment_challenge(code, name, public_key, hub_cert), signature
        )
        return fingerprint

    @staticmethod
    def _check(
        s: Session, code: str, name: str, fingerprint: str
    ) -> tuple[PairingCode, Node | None]:
        """The pairing code, and the revoked node of that name if there is one."""
        pairing = s.scalars(
            select(PairingCode).where(PairingCode.code_hash == pairing_digest(code))
        ).first()
        if pairing is None:
            raise Unauthorized("pairing code is not valid")
        if pairing.used_at is not None:
            raise Unauthorized("pairing code was used already: ask for a new one")
        if pairing.expires_at < utcnow():
            raise Unauthorized("pairing code has expired: ask for a new one")
        named = s.scalars(select(Node).where(Node.name == name)).first()
        if named is not None and not named.revoked:
            raise Conflict(
                f"a node named {name!r} is enrolled already (to give it a new key, "
                "revoke it, then enroll it again)"
            )
        holder = s.scalars(select(Node).where(Node.key_fingerprint == fingerprint)).first()
        if holder is not None:
            state = "revoked node" if holder.revoked else "node"
            raise Conflict(
                f"key {fingerprint} belongs to the {state} {holder.name!r}: each node "
                "enrolls with a key of its own (`sendense node enroll` makes a new one)"
            )
        return pairing, named

    def revoke(self, name: str) -> NodeInfo:
        with self.db.session() as s:
            node = self._get(s, name)
            node.revoked = True
            node.connected = False
            info = _info(node)
        log.warning("node revoked name=%s", name)
        return info

    @staticmethod
    def _get(s: Session, name: str) -> Node:
        node = s.scalars(select(Node).where((Node.name == name) | (Node.id == name))).first()
        if node is None:
            raise NotFound(f"no node named {name!r}")
        return node

    def get(self, name: str) -> NodeInfo:
        with self.db.session() as s:
            node = self._get(s, name)
            return _info(node, self._uids(s).get(node.system_user or ""))

    def list(self) -> list[NodeInfo]:
        with self.db.session() as s:
            uids = self._uids(s)
            nodes = s.scalars(select(Node).order_by(Node.name))
            return [_info(n, uids.get(n.system_user or "")) for n in nodes]

    def _uids(self, s: Session) -> dict[str, int]:
        """The uids of the node users this hub made on its machine."""
        rows = s.execute(
            select(NodeAccount.user_name, NodeAccount.uid).where(
                NodeAccount.hub_id == (self.db.owner or "hub")
            )
        )
        return {user: uid for user, uid in rows if uid is not None}

    def authorized(self, fingerprint: str) -> NodeInfo | None:
        """The enrolled, unrevoked node holding this key, if any."""
        with self.db.session() as s:
            node = s.scalars(
                select(Node).where(Node.key_fingerprint == fingerprint, Node.revoked.is_(False))
            ).first()
            return _info(node) if node else None

    def public_keys(self) -> dict[str, str]:
        with self.db.session() as s:
            rows = s.execute(select(Node.id, Node.public_key).where(Node.revoked.is_(False)))
            return {node_id: key for node_id, key in rows if key}

    def api_token(self, name: str) -> str:
        with self.db.session() as s:
            sealed = self._get(s, name).api_token_sealed
        if sealed is None:
            raise NotFound(f"node {name!r} has no API token")
        return self.box.open(sealed)

    def set_connected(self, node_id: str, connected: bool) -> None:
        with self.db.session() as s:
            node = s.get(Node, node_id)
            if node is not None:
                node.connected = connected
                if connected:
                    node.last_seen = utcnow()

    def refresh_connected(self, listening: Callable[[str, int], bool]) -> builtins.list[NodeInfo]:
        """Nodes, with `connected` probed now: a node is connected while its reverse
        forward listens on the hub (`listening(host, port)`)."""
        for node in self.list():
            if node.reverse_port is not None:
                up = not node.revoked and listening("127.0.0.1", node.reverse_port)
                if up or node.connected:
                    self.set_connected(node.id, up)
        return self.list()
