"""People who log in: a name, a role, an argon2id password and an optional TOTP
second factor (its secret sealed with secret.key). A login makes a session, an
API token of the user's role with an expiry and `created_by = "login"`; changing
the password ends the user's sessions, removing the user revokes all their
tokens, in the same transaction, so both take effect at the next request."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sendense.common.errors import Conflict, InvalidInput, NotFound, Unauthorized
from sendense.hub.auth.passwords import (
    hash_password,
    needs_rehash,
    new_totp_secret,
    password_matches,
    provisioning_uri,
    rehash,
    totp_step,
)
from sendense.hub.auth.roles import Role
from sendense.hub.auth.secrets import SecretBox
from sendense.hub.auth.tokens import SESSION, TokenInfo, TokenService
from sendense.hub.db.database import Database
from sendense.hub.db.models import ApiToken, User

NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
# One message whatever was wrong (name, password, code, code missing): a caller
# learns nothing about which users exist or which of them use TOTP.
LOGIN_FAILED = "login failed: wrong name, password or one-time code"


class LoginFailed(Unauthorized):
    def __init__(self, user_known: bool) -> None:
        super().__init__(LOGIN_FAILED)
        self.user_known = user_known  # for the audit log only, never for the caller


@dataclass(frozen=True)
class UserInfo:
    id: str
    name: str
    role: Role
    totp: bool
    created_at: datetime
    created_by: str | None
    password_changed_at: datetime


def _info(row: User) -> UserInfo:
    return UserInfo(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        totp=row.totp_sealed is not None,
        created_at=row.created_at,
        created_by=row.created_by,
        password_changed_at=row.password_changed_at,
    )


def _now() -> datetime:
    return datetime.now(UTC)


class UserService:
    def __init__(
        self, db: Database, box: SecretBox, tokens: TokenService, session_lifetime: timedelta
    ) -> None:
        self.db = db
        self.box = box
        self.tokens = tokens
        self.session_lifetime = session_lifetime

    def create(
        self,
        name: str,
        role: Role,
        password: str,
        *,
        totp: bool = False,
        created_by: str | None = None,
    ) -> tuple[UserInfo, str | None]:
        """The new user and, with `totp`, the otpauth:// URI to give their
        authenticator app (shown once: the hub keeps only the sealed secret)."""
        if not NAME.match(name):
            raise InvalidInput(f"user name {name!r}: 1-64 of A-Z a-z 0-9 . _ @ -")
        hashed = hash_password(password)  # slow: outside the transaction
        secret = new_totp_secret() if totp else None
        row = User(
            name=name,
            role=Role(role).value,
            password_hash=hashed,
            totp_sealed=self.box.seal(secret) if secret else None,
            created_by=created_by,
        )
        try:
            with self.db.session() as s:
                if s.scalar(select(User.id).where(User.name == name)) is not None:
                    raise Conflict(f"user {name!r} exists")
                s.add(row)
                s.flush()
                info = _info(row)
        except IntegrityError as exc:  # created at the same moment elsewhere
            raise Conflict(f"user {name!r} exists") from exc
        return info, provisioning_uri(secret, name) if secret else None

    def list(self) -> list[UserInfo]:
        with self.db.session() as s:
            return [_info(r) for r in s.scalars(select(User).order_by(User.name))]

    def get(self, name: str) -> UserInfo:
        with self.db.session() as s:
            return _info(self._row(s, name))

    def set_password(self, name: str, password: str) -> UserInfo:
        """A new password; the user's sessions end (other tokens stay)."""
        hashed = hash_password(password)
        with self.db.session() as s:
            row = self._row(s, name)
            row.password_hash = hashed
            row.password_changed_at = _now()
            self._revoke(s, row.id, sessions_only=True)
            s.flush()
            return _info(row)

    def change_own(
        self, user_id: str, current: str, *, password: str | None = None, totp: bool | None = None
    ) -> tuple[UserInfo, str | None]:
        """A user's own change, their current password first: a new password (their
        sessions end, this one too), and/or a second factor set up anew (its URI,
        shown once) or removed."""
        with self.db.session() as s:
            row = s.get(User, user_id)
            stored = row.password_hash if row else None
        if row is None or not password_matches(stored, current):
            raise Unauthorized("the current password is not right")
        hashed = hash_password(password) if password is not None else None
        secret = new_totp_secret() if totp else None
        with self.db.session() as s:
            row = s.get(User, user_id)
            if row is None or row.password_hash != stored:
                raise Conflict("the user changed meanwhile: try again")
            if hashed is not None:
                row.password_hash = hashed
                row.password_changed_at = _now()
                self._revoke(s, row.id, sessions_only=True)
            if totp is not None:
                row.totp_sealed = self.box.seal(secret) if secret else None
                row.totp_last_step = None
            s.flush()
            info = _info(row)
        return info, provisioning_uri(secret, info.name) if secret else None

    def remove(self, name: str) -> UserInfo:
        """Remove a user and revoke every token of theirs; refused (409) for the
        last admin."""
        with self.db.session() as s:
            # Every admin row locked: two removals of two admins cannot both pass.
            admins = s.scalars(
                select(User).where(User.role == Role.ADMIN.value).with_for_update()
            ).all()
            row = self._row(s, name)
            if row.role == Role.ADMIN.value and len(admins) <= 1:
                raise Conflict(
                    f"user {name!r} is the last admin: removing them would leave nobody "
                    "to manage users; add another admin first"
                )
            info = _info(row)
            self._revoke(s, row.id, sessions_only=False)
            s.delete(row)
            return info

    def login(self, name: str, password: str, code: str | None) -> tuple[UserInfo, TokenInfo, str]:
        """A new session (its token's details and secret) or LoginFailed."""
        with self.db.session() as s:
            row = s.scalars(select(User).where(User.name == name)).first()
            found = (
                (row.id, row.password_hash, row.totp_sealed, row.totp_last_step) if row else None
            )
        # The hash is checked outside any transaction (it takes a few hundred ms),
        # and checked for an unknown name too, so both take the same time.
        if not password_matches(found[1] if found else None, password) or found is None:
            raise LoginFailed(user_known=found is not None)
        user_id, stored, sealed, last_step = found
        step = None
        if sealed is not None:
            step = totp_step(self.box.open(sealed), code, last_step) if code else None
            if step is None:
                raise LoginFailed(user_known=True)
        changes: dict[str, object] = {"id": user_id}  # at least a no-op, to match the row
        if step is not None:
            changes["totp_last_step"] = step
        if needs_rehash(stored):  # made with older parameters: today's from now on
            changes["password_hash"] = rehash(password)
        with self.db.session() as s:
            query = update(User).where(User.id == user_id, User.password_hash == stored)
            if step is not None:  # the same code twice at once: one of them wins
                query = query.where(or_(User.totp_last_step.is_(None), User.totp_last_step < step))
            done = s.execute(query.values(**changes))
            if getattr(done, "rowcount", 0) != 1:
                raise LoginFailed(user_known=True)  # removed, password changed, code replayed
            row = s.get(User, user_id)
            assert row is not None
            info = _info(row)
        token, secret = self.tokens.issue(
            info.name, info.role, self.session_lifetime, created_by=SESSION, user_id=info.id
        )
        return info, token, secret

    def logout(self, token_id: str) -> TokenInfo:
        """End a session (the caller's own): only a login's token, never another
        kind, which `sendense token revoke` is for."""
        with self.db.session() as s:
            row = s.get(ApiToken, token_id)
            if row is None or row.created_by != SESSION or row.user_id is None:
                raise Conflict("this token is not a login's session: revoke it with its id")
            if row.revoked_at is None:
                row.revoked_at = _now()
        return self.tokens.get(token_id)

    @staticmethod
    def _row(s: Session, name: str) -> User:
        row = s.scalars(select(User).where(User.name == name)).first()
        if row is None:
            raise NotFound(f"user {name!r} does not exist")
        return row

    @staticmethod
    def _revoke(s: Session, user_id: str, *, sessions_only: bool) -> None:
        query = update(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        if sessions_only:
            query = query.where(ApiToken.created_by == SESSION)
        s.execute(query.values(revoked_at=_now()))
