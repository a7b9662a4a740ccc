"""The hub's API tokens, stored as digests in its database: each with a role, an
optional expiry, the time it was last used, and a revocation time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from sendense.common.errors import Conflict, InvalidInput, NotFound, Unauthorized
from sendense.common.tokens import new_token, token_digest
from sendense.hub.auth.roles import Role
from sendense.hub.db.database import Database
from sendense.hub.db.models import ApiToken

PREFIX = "sdh_"
# `created_by` of a session's token (a user's login): what tells a session from
# other tokens.
SESSION = "login"
# last_used_at is written at most this often per token, not on every request.
LAST_USED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who makes a request: the token, its role, and its user when it has one."""

    token_id: str
    name: str
    role: Role
    user_id: str | None = None

    @property
    def label(self) -> str:
        return f"token:{self.token_id}"

    @property
    def starter(self) -> str:
        """Who, as a task records who started it: `user:<name>` or `token:<name>`."""
        return f"user:{self.name}" if self.user_id else f"token:{self.name}"


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    user_id: str | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        user_id=row.user_id,
    )


def _now() -> datetime:
    return datetime.now(UTC)


class TokenService:
    def __init__(self, db: Database, session_idle: timedelta | None = None) -> None:
        """`session_idle`: a login's session unused this long ends (None: never)."""
        self.db = db
        self.session_idle = session_idle

    def issue(
        self,
        name: str,
        role: Role = Role.ADMIN,
        expires_in: timedelta | None = None,
        created_by: str | None = None,
        user_id: str | None = None,
    ) -> tuple[TokenInfo, str]:
        """A new token and its secret, which is shown once and never stored."""
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidInput("a token's lifetime must be positive")
        token = new_token(PREFIX)
        expires_at = _now() + expires_in if expires_in is not None else None
        row = ApiToken(
            name=name,
            token_hash=token_digest(token),
            role=Role(role).value,
            expires_at=expires_at,
            created_by=created_by,
            user_id=user_id,
        )
        with self.db.session() as s:
            s.add(row)
            s.flush()
            info = _info(row)
        return info, token

    def create(
        self,
        name: str,
        role: Role = Role.ADMIN,
        expires_in: timedelta | None = None,
        created_by: str | None = None,
    ) -> str:
        """A new token's secret (see `issue`)."""
        return self.issue(name, role, expires_in, created_by)[1]

    def count(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(ApiToken)) or 0)

    def list(self) -> list[TokenInfo]:
        with self.db.session() as s:
            rows = s.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id))
            return [_info(r) for r in rows]

    def get(self, token_id: str) -> TokenInfo:
        with self.db.session() as s:
            row = s.get(ApiToken, token_id)
            if row is None:
                raise NotFound(f"token {token_id} does not exist")
            return _info(row)

    def verify(self, token: str | None) -> Principal:
        """Who the token is, or Unauthorized: missing, unknown, expired or revoked."""
        if not token:
            raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
        now = _now()
        with self.db.session() as s:
            row = s.scalars(
                select(ApiToken).where(ApiToken.token_hash == token_digest(token))
            ).first()
            if row is None:
                raise Unauthorized("API token is not valid")
            if row.revoked_at is not None:
                raise Unauthorized(f"API token {row.name!r} was revoked at {row.revoked_at:%c} UTC")
            if row.expires_at is not None and row.expires_at <= now:
                raise Unauthorized(f"API token {row.name!r} expired at {row.expires_at:%c} UTC")
            if self._idle(row, now):
                raise Unauthorized(f"session {row.name!r} ended: unused for too long, log in again")
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
                row.last_used_at = now
            return Principal(row.id, row.name, Role(row.role), row.user_id)

    def _idle(self, row: ApiToken, now: datetime) -> bool:
        """A session unused for `session_idle` (its last use is known to within
        LAST_USED_EVERY, which is why the idle time is at least twice that)."""
        if self.session_idle is None or row.created_by != SESSION:
            return False
        return now - (row.last_used_at or row.created_at) > self.session_idle

    def revoke(self, token_id: str, by: Principal | None = None) -> TokenInfo:
        """Revoke a token. Refused (409) when it would leave no active admin token:
        nobody locks the hub's API away by mistake (`sendense hub token` on the hub
        machine can always make a new one)."""
        now = _now()
        with self.db.session() as s:
            row = s.get(ApiToken, token_id, with_for_update=True)
            if row is None:
                raise NotFound(f"token {token_id} does not exist")
            if row.revoked_at is not None:
                return _info(row)
            if row.role == Role.ADMIN and not self._other_admin(s, token_id, now):
                who = "the token you are using" if by and by.token_id == token_id else "it"
                raise Conflict(
                    f"token {row.name!r} is the last active admin token: revoking {who} "
                    "would leave nobody able to manage the hub; create another admin "
                    "token first"
                )
            s.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=now))
            s.refresh(row)
            return _info(row)

    @staticmethod
    def _other_admin(s: Session, token_id: str, now: datetime) -> bool:
        found = s.scalar(
            select(func.count())
            .select_from(ApiToken)
            .where(
                ApiToken.id != token_id,
                ApiToken.role == Role.ADMIN.value,
                ApiToken.revoked_at.is_(None),
                (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now),
            )
        )
        return bool(found)
