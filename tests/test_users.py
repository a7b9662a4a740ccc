"""Users against a real hub process over TLS: argon2id passwords, TOTP, sessions
that carry the user's role and end on logout, a new password or removal, failed
logins limited per user and per address (kept across a restart), `sendense user`
offline and through the API, and the audit log of all of it, without a secret in
it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pyotp
import pytest

from sendense.common.errors import Conflict, NotFound, Unauthorized
from sendense.hub.auth.roles import Role
from sendense.hub.auth.users import LoginFailed
from sendense.hub.service import Hub
from tests.rig.cli import sendense
from tests.rig.hub import HubProcess

PER_USER = 4
PER_ADDRESS = 10
PASSWORDS = {
    "alice": "alice-Correct-Horse-1",
    "bob": "bob-Battery-Staple-2",
    "carol": "carol-Second-Factor-3",
    "dave": "dave-Locked-Out-Soon-4",
    "erin": "erin-Same-Address-5",
}
FAILED = "login failed: wrong name, password or one-time code"


@pytest.fixture
def users_hub(tmp_path: Path, sqlite_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(tmp_path / "data", sqlite_url)
    hub.env["SENDENSE_HUB_LOGIN_FAILURES_PER_USER"] = str(PER_USER)
    hub.env["SENDENSE_HUB_LOGIN_FAILURES_PER_ADDRESS"] = str(PER_ADDRESS)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


def offline(hub: HubProcess, *args: str, stdin: str | None = None) -> Any:
    """`sendense user ...` on the hub's machine, against its data directory."""
    env = {"SENDENSE_HUB_DATABASE_URL": hub.env["SENDENSE_HUB_DATABASE_URL"]}
    return sendense("user", *args, "--data-dir", str(hub.data_dir), env=env, stdin=stdin)


def through_api(hub: HubProcess, token: str, *args: str, stdin: str | None = None) -> Any:
    return sendense("user", *args, env=hub.cli_env(token), stdin=stdin)


def login(
    hub: HubProcess, name: str, password: str, totp: str | None = None, source: str | None = None
) -> httpx.Response:
    body = {"name": name, "password": password} | ({"totp": totp} if totp else {})
    transport = httpx.HTTPTransport(verify=hub.verify, local_address=source) if source else None
    with httpx.Client(base_url=hub.url, verify=hub.verify, transport=transport) as client:
        return client.post("/api/v1/auth/login", json=body)


def session(hub: HubProcess, name: str, totp: str | None = None) -> str:
    answer = login(hub, name, PASSWORDS[name], totp)
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def db_rows(hub: HubProcess, query: str) -> list[tuple[Any, ...]]:
    path = hub.env["SENDENSE_HUB_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def database_bytes(hub: HubProcess) -> bytes:
    path = Path(hub.env["SENDENSE_HUB_DATABASE_URL"].removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def audit(hub: HubProcess) -> list[dict[str, Any]]:
    with hub.client(hub.initial_token()) as client:
        entries: list[dict[str, Any]] = client.get("/api/v1/audit").json()
        return entries


def assert_no_secret_anywhere(hub: HubProcess, *secrets: str) -> None:
    """Not in the audit log, the hub's log or the database (in clear)."""
    for where, text in (
        ("audit log", str(audit(hub))),
        ("hub log", hub.log.read_text()),
        ("database", database_bytes(hub).decode("latin-1")),
    ):
        for secret in secrets:
            assert secret not in text, f"a secret in the {where}"


def test_an_admin_made_offline_logs_in_and_sessions_carry_the_user_s_role(
    users_hub: HubProcess,
) -> None:
    hub = users_hub
    added = offline(hub, "add", "alice", "--role", "admin", "--password-stdin", stdin="x" * 4)
    assert added.returncode == 2  # too short: one line, no traceback
    assert "at least 10 characters" in added.stderr
    assert "Traceback" not in added.stderr
    added = offline(
        hub, "add", "alice", "--role", "admin", "--password-stdin", stdin=PASSWORDS["alice"]
    )
    assert added.returncode == 0, added.stderr
    [(stored,)] = db_rows(hub, "SELECT password_hash FROM users WHERE name = 'alice'")
    assert stored.startswith("$argon2id$")

    answer = login(hub, "alice", PASSWORDS["alice"])
    assert answer.status_code == 200, answer.text
    made = answer.json()
    assert (made["user"], made["role"]) == ("alice", "admin")
    assert made["expires_at"]
    alice = made["token"]
    # alice, an admin, adds bob, a viewer, through the API
    bob_added = through_api(
        hub, alice, "add", "bob", "--role", "viewer", "--password-stdin", stdin=PASSWORDS["bob"]
    )
    assert bob_added.returncode == 0, bob_added.stderr
    listed = through_api(hub, alice, "list")
    assert listed.returncode == 0
    assert "alice" in listed.stdout
    assert "viewer" in listed.stdout
    bob = session(hub, "bob")
    with hub.client(bob) as client:
        assert client.get("/api/v1/vms").status_code == 200
        refused = client.post(
            "/api/v1/users", json={"name": "eve", "role": "admin", "password": "p" * 12}
        )
        assert refused.status_code == 403
        assert "viewer" in refused.json()["message"]
        assert client.get("/api/v1/users").status_code == 403
        assert client.post("/api/v1/auth/logout").status_code == 200
        assert client.get("/api/v1/vms").status_code == 401  # the session is over
    with hub.client(alice) as client:
        users = client.get("/api/v1/users")
        assert users.status_code == 200
        assert {u["name"]: u["role"] for u in users.json()} == {"alice": "admin", "bob": "viewer"}
        for secret in (*PASSWORDS.values(), "argon2"):
            assert secret not in users.text
    with hub.client(hub.initial_token()) as client:  # a token is not a session
        assert client.post("/api/v1/auth/logout").status_code == 409

    entries = audit(hub)
    logins = [
        (e["actor"], e["role"], e["target"], e["status"])
        for e in entries
        if e["action"] == "/api/v1/auth/login"
    ]
    assert logins == [
        ("bob", "viewer", {"user": "bob"}, 200),
        ("alice", "admin", {"user": "alice"}, 200),
    ]
    added_rows = [e for e in entries if e["action"] == "/api/v1/users" and e["method"] == "POST"]
    assert [(e["actor"], e["target"], e["status"]) for e in added_rows] == [
        ("bob", {}, 403),
        ("alice", {"user": "bob"}, 201),
    ]
    offline_rows = [e for e in entries if e["method"] == "CLI"]
    assert [(e["action"], e["target"]) for e in offline_rows] == [
        ("sendense user add", {"user": "alice"})
    ]
    assert offline_rows[0]["actor"].startswith("cli:")
    assert_no_secret_anywhere(hub, *PASSWORDS.values())


def test_totp_is_required_once_enrolled_and_every_failure_is_the_same_401(
    users_hub: HubProcess,
) -> None:
    hub = users_hub
    added = offline(
        hub, "add", "carol", "--role", "operator", "--totp", "--password-stdin",
        stdin=PASSWORDS["carol"] + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    uri = added.stdout.strip()
    assert uri.startswith("otpauth://totp/")
    secret = parse_qs(urlparse(uri).query)["secret"][0]
    totp = pyotp.TOTP(secret)
    wrong_code = f"{(int(totp.now()) + 1) % 1_000_000:06d}"
    failures = [
        login(hub, "carol", PASSWORDS["carol"]),  # no code
        login(hub, "carol", PASSWORDS["carol"], wrong_code),
        login(hub, "carol", "not-carols-password", totp.now()),
        login(hub, "nobody", PASSWORDS["carol"], totp.now()),
    ]
    for failed in failures:
        assert failed.status_code == 401
        assert failed.json()["message"] == FAILED
    code = totp.now()
    answer = login(hub, "carol", PASSWORDS["carol"], code)
    assert answer.status_code == 200, answer.text
    assert answer.json()["role"] == "operator"
    replayed = login(hub, "carol", PASSWORDS["carol"], code)
    assert replayed.status_code == 401  # a code is taken once
    with hub.client(answer.json()["token"]) as client:
        assert client.get("/api/v1/jobs").status_code == 200
        assert client.post("/api/v1/repositories", json={"path": "/x"}).status_code == 403

    [(sealed,)] = db_rows(hub, "SELECT totp_sealed FROM users WHERE name = 'carol'")
    assert sealed
    assert secret not in sealed
    failed_rows = [
        (e["target"], e["outcome"])
        for e in audit(hub)
        if e["action"] == "/api/v1/auth/login" and e["status"] == 401
    ]
    # newest first; the tried name is kept only when it is a user's (so never a
    # password typed into the name field)
    carol = ({"user": "carol"}, "unauthenticated")
    assert failed_rows == [carol, ({}, "unauthenticated"), carol, carol, carol]
    assert_no_secret_anywhere(hub, secret, PASSWORDS["carol"], "not-carols-password")


def test_failed_logins_are_limited_per_user_and_per_address(users_hub: HubProcess) -> None:
    hub = users_hub
    for name in ("dave", "erin"):
        added = offline(
            hub, "add", name, "--role", "viewer", "--password-stdin", stdin=PASSWORDS[name]
        )
        assert added.returncode == 0, added.stderr
    for _ in range(PER_USER):
        assert login(hub, "dave", "guess-guess-guess").status_code == 401
    locked = login(hub, "dave", PASSWORDS["dave"])  # right, but too late
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    assert "for this user" in locked.json()["message"]
    # from another address too: the limit is the user's
    assert login(hub, "dave", PASSWORDS["dave"], source="127.0.0.2").status_code == 429
    # The failures are the database's, not the process's: a restarted hub (killed,
    # not even stopped) still refuses. They are kept as keyed digests: no name.
    rows = db_rows(hub, "SELECT scope, key FROM failed_attempts")
    assert sum(1 for scope, _ in rows if scope == "login-user") == PER_USER
    assert all(len(key) == 64 and "dave" not in key for _, key in rows)
    assert b"guess-guess-guess" not in database_bytes(hub)
    hub.kill9()
    hub.start()
    assert login(hub, "dave", PASSWORDS["dave"]).status_code == 429
    # another user from the same address is not locked out by dave's failures
    assert login(hub, "erin", PASSWORDS["erin"]).status_code == 200
    for n in range(PER_ADDRESS - PER_USER):  # unknown names: each user has room
        assert login(hub, f"nobody{n}", "guess-guess-guess").status_code == 401
    crowded = login(hub, "erin", PASSWORDS["erin"])
    assert crowded.status_code == 429
    assert "127.0.0.1" in crowded.json()["message"]
    assert int(crowded.headers["Retry-After"]) > 0
    # erin from another address is fine: the limit is that address's
    assert login(hub, "erin", PASSWORDS["erin"], source="127.0.0.2").status_code == 200


def test_a_new_password_ends_sessions_and_removal_revokes_at_once(users_hub: HubProcess) -> None:
    hub = users_hub
    admin = hub.initial_token()
    added = through_api(
        hub, admin, "add", "alice", "--role", "admin", "--password-stdin", stdin=PASSWORDS["alice"]
    )
    assert added.returncode == 0, added.stderr
    first = session(hub, "alice")
    second = session(hub, "alice")
    new_password = "alice-Brand-New-Password-9"
    changed = through_api(hub, admin, "passwd", "alice", "--password-stdin", stdin=new_password)
    assert changed.returncode == 0, changed.stderr
    for old in (first, second):
        with hub.client(old) as client:
            assert client.get("/api/v1/vms").status_code == 401
    assert login(hub, "alice", PASSWORDS["alice"]).status_code == 401
    fresh = login(hub, "alice", new_password)
    assert fresh.status_code == 200
    with hub.client(fresh.json()["token"]) as client:
        assert client.get("/api/v1/users").status_code == 200
        # removing the last admin user is refused, through the API and offline
        last = through_api(hub, fresh.json()["token"], "remove", "alice")
        assert last.returncode == 4
        assert "last admin" in last.stderr
        assert offline(hub, "remove", "alice").returncode == 4
        more = offline(hub, "add", "bob", "--role", "admin", "--password-stdin", stdin="b" * 12)
        assert more.returncode == 0, more.stderr
        removed = offline(hub, "remove", "alice")  # offline, while the hub runs
        assert removed.returncode == 0, removed.stderr
        assert client.get("/api/v1/vms").status_code == 401  # at once
    assert login(hub, "alice", new_password).status_code == 401
    gone = through_api(hub, admin, "remove", "alice")
    assert gone.returncode == 3
    assert "does not exist" in gone.stderr
    no_terminal = through_api(hub, admin, "passwd", "bob", stdin="")  # no terminal
    assert no_terminal.returncode == 2
    assert "--password-stdin" in no_terminal.stderr

    entries = audit(hub)
    changes = [
        (e["method"], e["action"], e["target"], e["status"])
        for e in entries
        if "users" in e["action"] or e["method"] == "CLI"
    ]
    assert changes == [
        ("DELETE", "/api/v1/users/{name}", {"name": "alice"}, 404),
        ("CLI", "sendense user remove", {"user": "alice"}, 200),
        ("CLI", "sendense user add", {"user": "bob"}, 200),
        ("DELETE", "/api/v1/users/{name}", {"name": "alice"}, 409),
        ("POST", "/api/v1/users/{name}/password", {"name": "alice"}, 200),
        ("POST", "/api/v1/users", {"user": "alice"}, 201),
    ]
    assert_no_secret_anywhere(hub, PASSWORDS["alice"], new_password, "b" * 12)


def test_the_user_service_on_both_databases(db_hub: Hub) -> None:
    """The same rules on SQLite and PostgreSQL: the conditional updates a login
    makes (a TOTP step taken once) and the admin rows a removal locks."""
    users = db_hub.users
    info, uri = users.create("ann", Role.ADMIN, "ann-Long-Password-1", totp=True)
    assert info.totp
    assert uri is not None
    totp = pyotp.TOTP(parse_qs(urlparse(uri).query)["secret"][0])
    with pytest.raises(Conflict):
        users.create("ann", Role.VIEWER, "another-password")
    with pytest.raises(LoginFailed):
        users.login("ann", "ann-Long-Password-1", None)
    code = totp.now()
    user, token, secret = users.login("ann", "ann-Long-Password-1", code)
    assert (user.name, token.role, token.user_id) == ("ann", Role.ADMIN, user.id)
    assert db_hub.tokens.verify(secret).role is Role.ADMIN
    with pytest.raises(LoginFailed):
        users.login("ann", "ann-Long-Password-1", code)  # replayed
    with pytest.raises(Conflict, match="last admin"):
        users.remove("ann")
    users.create("ben", Role.ADMIN, "ben-Long-Password-2")
    users.set_password("ann", "ann-Other-Password-3")
    with pytest.raises(Unauthorized):
        db_hub.tokens.verify(secret)
    users.remove("ann")
    with pytest.raises(NotFound):
        users.get("ann")
    assert [u.name for u in users.list()] == ["ben"]


def test_a_token_made_for_a_user_has_at_most_its_role_and_goes_with_it(
    users_hub: HubProcess,
) -> None:
    """Issue 12, point 9: a token per user (for the user's scripts) or standalone."""
    hub = users_hub
    admin = hub.initial_token()
    added = through_api(
        hub, admin, "add", "bob", "--role", "operator", "--password-stdin", stdin=PASSWORDS["bob"]
    )
    assert added.returncode == 0, added.stderr

    def create(*args: str) -> Any:
        return sendense("token", "create", "--name", "bob-script", *args, env=hub.cli_env(admin))

    above = create("--role", "admin", "--user", "bob")
    assert above.returncode == 2, above.stderr
    assert above.stderr.count("\n") == 1
    assert "cannot have role admin" in above.stderr
    nobody = create("--role", "viewer", "--user", "nobody")
    assert nobody.returncode == 3, nobody.stderr
    made = create("--role", "operator", "--user", "bob")
    assert made.returncode == 0, made.stderr
    script = made.stdout.strip()
    with hub.client(script) as client:
        mine = client.get("/api/v1/tokens/current").json()
        assert (mine["role"], mine["user_id"] is not None) == ("operator", True)
        assert client.get("/api/v1/users").status_code == 403  # an operator's
        # A new password ends sessions, not the user's own tokens...
        changed = through_api(hub, admin, "passwd", "bob", "--password-stdin", stdin="b" * 14)
        assert changed.returncode == 0, changed.stderr
        assert client.get("/api/v1/vms").status_code == 200
        # ...removing the user revokes them at once.
        removed = through_api(hub, admin, "remove", "bob")
        assert removed.returncode == 0, removed.stderr
        assert client.get("/api/v1/vms").status_code == 401
