"""The hub's API tokens, stored as digests in its database."""

from __future__ import annotations

from sqlalchemy import func, select

from sendense.common.errors import Unauthorized
from sendense.common.tokens import new_token, token_digest
from sendense.hub.db.database import Database
from sendense.hub.db.models import ApiToken

PREFIX = "sdh_"


class TokenService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str) -> str:
        token = new_token(PREFIX)
        with self.db.session() as s:
            s.add(ApiToken(name=name, token_hash=token_digest(token)))
        return token

    def count(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(ApiToken)) or 0)

    def verify(self, token: str | None) -> str:
        """The token's name, or Unauthorized."""
        if not token:
            raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
        with self.db.session() as s:
            row = s.scalars(
                select(ApiToken).where(ApiToken.token_hash == token_digest(token))
            ).first()
        if row is None:
            raise Unauthorized("API token is not valid")
        return row.name
