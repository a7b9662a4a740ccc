"""The audit log: every state-changing API call, who made it and how it ended.
Rows are only ever added; nothing in the hub updates or deletes one, and the
database's triggers (migration 0012) refuse it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from sendense.hub.auth.tokens import Principal
from sendense.hub.db.database import Database
from sendense.hub.db.models import AuditEntry

MAX_PAGE = 1000


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    token_id: str | None
    actor: str | None
    role: str | None
    method: str
    action: str
    target: dict[str, Any]
    client: str | None
    status: int
    outcome: str


def outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status == 401:
        return "unauthenticated"
    if status == 403:
        return "forbidden"
    return "failed"


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self,
        principal: Principal | None,
        method: str,
        action: str,
        target: dict[str, Any],
        client: str | None,
        status: int,
        actor: str | None = None,
    ) -> None:
        """`actor`: who acted without a token (a command run on the hub's machine)."""
        with self.db.session() as s:
            s.add(
                AuditEntry(
                    token_id=principal.token_id if principal else None,
                    actor=principal.name if principal else actor,
                    role=principal.role.value if principal else None,
                    method=method[:8],
                    action=action[:255],
                    target={k: str(v)[:255] for k, v in target.items()},
                    client=client[:64] if client else None,
                    status=status,
                    outcome=outcome(status),
                )
            )

    def entries(self, limit: int = 100, offset: int = 0) -> list[AuditRecord]:
        """Newest first."""
        with self.db.session() as s:
            rows = s.scalars(
                select(AuditEntry)
                .order_by(AuditEntry.id.desc())
                .limit(min(limit, MAX_PAGE))
                .offset(offset)
            )
            return [
                AuditRecord(
                    id=r.id,
                    at=r.at,
                    token_id=r.token_id,
                    actor=r.actor,
                    role=r.role,
                    method=r.method,
                    action=r.action,
                    target=dict(r.target or {}),
                    client=r.client,
                    status=r.status,
                    outcome=r.outcome,
                )
                for r in rows
            ]
