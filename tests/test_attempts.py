"""Attempts under a limit in the hub's database (hub/auth/attempts.py), on SQLite
and PostgreSQL: the window fills with failures only, a full one refuses with the
wait until its oldest leaves, each limit keeps its own window, and no name is
stored."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from sendense.common.errors import TooManyAttempts
from sendense.hub.auth.attempts import AttemptWindow
from sendense.hub.db.models import FailedAttempt, utcnow
from sendense.hub.service import Hub


def test_a_window_of_failures_per_key_each_limit_its_own(db_hub: Hub) -> None:
    hub = db_hub
    logins = AttemptWindow(hub.db, hub.box, "login-user", 2, 300, "login")
    enrollments = AttemptWindow(hub.db, hub.box, "enrollment", 10, 60, "enrollment")
    first = logins.attempt("dave", shown="for this user")
    logins.attempt("dave", shown="for this user")
    with pytest.raises(TooManyAttempts) as refused:
        logins.attempt("dave", shown="for this user")
    assert refused.value.http_status == 429
    assert "too many login attempts for this user" in refused.value.message
    assert 295 <= refused.value.retry_after_s <= 300
    logins.attempt("erin")  # another key has its own window
    logins.forgive(first)  # it succeeded after all: a place comes free
    logins.attempt("dave")

    # A login failure 100 s old is inside its 300 s window, though older than the
    # enrollments' 60 s: an enrollment attempt must not sweep it away.
    with hub.db.session() as s:
        old = s.scalars(select(FailedAttempt).where(FailedAttempt.scope == "login-user")).first()
        assert old is not None
        old.at = utcnow() - timedelta(seconds=100)
    enrollments.attempt("127.0.0.1")
    with hub.db.session() as s:
        rows = s.execute(select(FailedAttempt.scope, FailedAttempt.key)).all()
    assert sum(1 for scope, _ in rows if scope == "login-user") == 3
    assert all(len(key) == 64 and "dave" not in key and "127.0" not in key for _, key in rows)
    with pytest.raises(TooManyAttempts):
        logins.attempt("dave")
