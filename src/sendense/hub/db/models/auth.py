"""Who may call the API and what they did: API tokens (sessions too), users who
log in with a password, and the append-only audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sendense.hub.db.models.base import Base, UtcDateTime, new_id, utcnow


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # A role of sendense.hub.auth.roles.Role; tokens from before 0012 are admin.
    role: Mapped[str] = mapped_column(String(16), default="admin")
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # The user the token acts for (a login's session); None: a standalone token.
    user_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Who made it: "token:<id>" through the API, "cli" offline, "first-start".
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class User(Base):
    """A person who logs in with a password (argon2id) and, when enrolled, a TOTP
    code. A login makes a session: an `api_tokens` row with the user's id and role."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # A role of sendense.hub.auth.roles.Role.
    role: Mapped[str] = mapped_column(String(16))
    # The argon2id hash in its PHC form ($argon2id$v=19$m=...,t=...,p=...$salt$hash).
    password_hash: Mapped[str] = mapped_column(String(255))
    # The TOTP secret sealed with secret.key (hub.auth.secrets); None: no second factor.
    totp_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The last TOTP time step accepted: a code is taken once, never replayed.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    password_changed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class AuditEntry(Base):
    """One state-changing API call, refused ones too. Append-only: no route changes
    or deletes a row, and a database trigger refuses UPDATE and DELETE."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    token_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    method: Mapped[str] = mapped_column(String(8))
    action: Mapped[str] = mapped_column(String(255))
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))


class FailedAttempt(Base):
    """An attempt under a limit (a login, a node's enrollment) while it runs, and
    after it failed until it leaves the limit's window (hub/auth/attempts.py).
    `key` is a keyed digest of the user name or client address, never the name
    itself: a password typed into the name field must not land here."""

    __tablename__ = "failed_attempts"
    __table_args__ = (
        Index("ix_failed_attempts_scope_key_at", "scope", "key", "at"),
        Index("ix_failed_attempts_at", "at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # The limit it counts against: "login-user", "login-address", "enrollment".
    scope: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
