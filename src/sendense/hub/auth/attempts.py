"""Attempts under a limit (logins per user name and per client address, node
enrollments per address) in a sliding window, kept in the hub's database: a
restarted hub, or another hub on the same database, counts them too.

An attempt is recorded before it is checked and taken back when it succeeds
(`forgive`): only failures fill the window, yet every attempt counts while it
runs, so a burst cannot slip past. The key is stored as a keyed digest
(`SecretBox.digest`): a password typed into the name field never reaches the
database. A limit's rows older than its window go at each of its attempts.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import delete, select

from sendense.common.errors import TooManyAttempts
from sendense.hub.auth.secrets import SecretBox
from sendense.hub.db.database import Database
from sendense.hub.db.models import FailedAttempt, utcnow


class AttemptWindow:
    def __init__(
        self, db: Database, box: SecretBox, scope: str, attempts: int, window_s: float, what: str
    ) -> None:
        self.db = db
        self.box = box
        self.scope = scope
        self.attempts = attempts
        self.window = timedelta(seconds=window_s)
        self.what = what

    def attempt(self, key: str, shown: str | None = None) -> str:
        """Count one attempt of `key`; TooManyAttempts when the window is full (the
        message says `shown`, else "from <key>"). Returns the attempt's id, for
        `forgive`."""
        now = utcnow()
        cutoff = now - self.window
        with self.db.session() as s:
            # This limit's old rows only: another limit's window may be longer.
            s.execute(
                delete(FailedAttempt).where(
                    FailedAttempt.scope == self.scope, FailedAttempt.at <= cutoff
                )
            )
            row = FailedAttempt(scope=self.scope, key=self.box.digest(key), at=now)
            s.add(row)
            s.flush()
            stamps = s.scalars(
                select(FailedAttempt.at)
                .where(
                    FailedAttempt.scope == self.scope,
                    FailedAttempt.key == row.key,
                    FailedAttempt.at > cutoff,
                )
                .order_by(FailedAttempt.at)
            ).all()
            if len(stamps) <= self.attempts:
                return row.id
            s.delete(row)  # refused unchecked: not a failure
            wait = math.ceil((stamps[0] + self.window - now).total_seconds())
        raise TooManyAttempts(
            f"too many {self.what} attempts {shown or f'from {key}'}: retry in {max(wait, 1)} s",
            max(wait, 1),
        )

    def forgive(self, attempt_id: str) -> None:
        """Take back an attempt that succeeded."""
        with self.db.session() as s:
            s.execute(delete(FailedAttempt).where(FailedAttempt.id == attempt_id))
