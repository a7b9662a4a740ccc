"""API tokens: random, shown once, stored as SHA-256 (they carry 256 bits of
entropy, so a slow password hash would add nothing)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import func, select

from sendense.common.errors import Unauthorized
from sendense.common.logging import register_secret
from sendense.hub.db.database import Database
from sendense.hub.db.models import ApiToken

PREFIX = "sdh_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str) -> str:
        token = PREFIX + secrets.token_urlsafe(32)
        register_secret(token)
        with self.db.session() as s:
            s.add(ApiToken(name=name, token_hash=_hash(token)))
        return token

    def count(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(ApiToken)) or 0)

    def verify(self, token: str | None) -> str:
        """The token's name, or Unauthorized."""
        if not token:
            raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
        with self.db.session() as s:
            row = s.scalars(select(ApiToken).where(ApiToken.token_hash == _hash(token))).first()
        if row is None:
            raise Unauthorized("API token is not valid")
        return row.name
