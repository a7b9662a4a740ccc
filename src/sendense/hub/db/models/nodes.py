"""The nodes that read VMs for the hub: their keys, tunnel users and ports, the
system accounts made for them, and the single-use codes that pair them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sendense.hub.db.models.base import Base, UtcDateTime, new_id, utcnow


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # The node's SSH public key (OpenSSH format); its tunnel logs in with it.
    public_key: Mapped[str | None] = mapped_column(Text)
    # Unique: one key, one node, ever (a revoked node's key is not taken again).
    key_fingerprint: Mapped[str | None] = mapped_column(String(128), unique=True)
    # The system user its tunnel logs in as on a hub (`sendense-n-<id>`).
    system_user: Mapped[str | None] = mapped_column(String(32), unique=True)
    # Hub-side loopback port of the reverse forward to the node's API (8081).
    reverse_port: Mapped[int | None] = mapped_column(Integer, unique=True)
    # The node's API token for the hub, encrypted with the hub's secret key.
    api_token_sealed: Mapped[str | None] = mapped_column(Text)
    revoked: Mapped[bool] = mapped_column(default=False)
    connected: Mapped[bool] = mapped_column(default=False)
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class NodeAccount(Base):
    """A system user a hub made on its machine for a node's tunnel: recorded before
    `useradd`, so a hub that restarts finds (and removes) the users it made for
    nodes that are revoked or gone, and only those."""

    __tablename__ = "node_accounts"

    hub_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(32), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(32))
    uid: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class PairingCode(Base):
    """Single use, short-lived; only its digest is stored."""

    __tablename__ = "pairing_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
