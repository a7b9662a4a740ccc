"""The console's server side without a browser: sign in and out, the session
cookie, CSRF on every change, the Content-Security-Policy, roles refused by the
server, and every page rendering for each role."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from sendense.hub.api.app import create_app
from sendense.hub.auth.cookies import COOKIE, CSRF_HEADER
from sendense.hub.auth.roles import Role
from sendense.hub.db.models import ApiToken
from sendense.hub.service import Hub


def totp_now(uri: str) -> str:
    return pyotp.TOTP(parse_qs(urlparse(uri).query)["secret"][0]).now()


PASSWORD = "correct horse battery staple"
PAGES = ["/", "/vms", "/tasks", "/policies", "/repositories", "/nodes", "/vcenters", "/settings"]


@pytest.fixture
def console(hub: Hub) -> Iterator[TestClient]:
    """A browser-like client: no token, cookies kept, redirects not followed."""
    with TestClient(create_app(hub), follow_redirects=False) as client:
        yield client


def sign_in(client: TestClient, name: str, password: str = PASSWORD, totp: str = "") -> int:
    form = client.get("/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert nonce, form.text
    answer = client.post(
        "/login",
        data={"name": name, "password": password, "totp": totp, "csrf": nonce[1], "next": "/"},
    )
    return int(answer.status_code)


def page_csrf(client: TestClient) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', client.get("/").text)
    assert found
    return found[1]


def test_a_page_needs_a_session_and_a_wrong_password_is_refused(
    hub: Hub, console: TestClient
) -> None:
    hub.users.create("ann", Role.ADMIN, PASSWORD)
    first = console.get("/vms")
    assert first.status_code == 303
    assert first.headers["location"].startswith("/login?next=/vms")
    assert sign_in(console, "ann", "wrong password") == 401
    assert COOKIE not in console.cookies
    assert sign_in(console, "ann") == 303
    cookie = console.cookies[COOKIE]
    assert console.get("/").status_code == 200
    assert cookie.startswith("sdh_")


def test_the_cookie_is_httponly_samesite_strict_and_logout_ends_the_session(
    hub: Hub, console: TestClient
) -> None:
    hub.users.create("ann", Role.ADMIN, PASSWORD)
    form = console.get("/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert nonce
    answer = console.post(
        "/login", data={"name": "ann", "password": PASSWORD, "csrf": nonce[1], "next": "/tasks"}
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/tasks"
    set_cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in set_cookie
    assert "samesite=strict" in set_cookie
    secret = console.cookies[COOKIE]
    csrf = page_csrf(console)
    assert console.post("/logout", data={"csrf": csrf}).status_code == 303
    # The session is revoked on the hub, not only forgotten by this browser.
    console.cookies.set(COOKIE, secret)
    assert console.get("/").status_code == 303
    with TestClient(create_app(hub)) as other:
        refused = other.get("/api/v1/vms", headers={"Authorization": f"Bearer {secret}"})
        assert refused.status_code == 401


def test_a_login_form_from_elsewhere_is_refused(hub: Hub, console: TestClient) -> None:
    hub.users.create("ann", Role.ADMIN, PASSWORD)
    answer = console.post("/login", data={"name": "ann", "password": PASSWORD, "csrf": "forged"})
    assert answer.status_code == 403
    assert COOKIE not in console.cookies


def test_totp_is_required_when_the_user_has_it(hub: Hub, console: TestClient) -> None:
    _, uri = hub.users.create("tom", Role.OPERATOR, PASSWORD, totp=True)
    assert uri is not None
    assert sign_in(console, "tom") == 401
    assert sign_in(console, "tom", totp="000000") == 401
    assert sign_in(console, "tom", totp=totp_now(uri)) == 303
    assert console.get("/").status_code == 200


def test_changes_need_the_csrf_token_and_the_role(hub: Hub, console: TestClient) -> None:
    hub.users.create("vic", Role.VIEWER, PASSWORD)
    hub.users.create("ann", Role.ADMIN, PASSWORD)
    assert sign_in(console, "ann") == 303
    body = {"name": "from-console"}
    missing = console.post("/api/v1/policies", json=body)
    assert missing.status_code == 403
    assert "CSRF" in missing.json()["message"]
    wrong = console.post("/api/v1/policies", json=body, headers={CSRF_HEADER: "0" * 64})
    assert wrong.status_code == 403
    made = console.post("/api/v1/policies", json=body, headers={CSRF_HEADER: page_csrf(console)})
    assert made.status_code == 201, made.text
    assert [p.name for p in hub.policies.list()] == ["from-console"]

    console.cookies.clear()
    assert sign_in(console, "vic") == 303
    forged = console.post(
        "/api/v1/policies", json={"name": "by-viewer"}, headers={CSRF_HEADER: page_csrf(console)}
    )
    assert forged.status_code == 403
    assert "viewer" in forged.json()["message"]
    assert [p.name for p in hub.policies.list()] == ["from-console"]
    # The viewer's pages show no button for what the role may not do.
    assert "Back up now" not in console.get("/vms").text
    assert "Make a pairing code" not in console.get("/nodes").text
    assert console.get("/audit").status_code == 403


def test_an_idle_session_ends(hub: Hub, console: TestClient) -> None:
    hub.users.create("ann", Role.ADMIN, PASSWORD)
    assert sign_in(console, "ann") == 303
    assert console.get("/").status_code == 200
    idle = datetime.now(UTC) - timedelta(seconds=hub.settings.session_idle_s + 60)
    with hub.db.session() as s:
        s.execute(update(ApiToken).values(last_used_at=idle, created_at=idle))
    ended = console.get("/")
    assert ended.status_code == 303
    assert "ended=" in ended.headers["location"]


@pytest.mark.parametrize("role", list(Role))
def test_every_page_renders_for_every_role_with_a_strict_policy(
    hub: Hub, console: TestClient, role: Role
) -> None:
    hub.users.create("someone", role, PASSWORD)
    assert sign_in(console, "someone") == 303
    for path in [*PAGES, "/audit"]:
        answer = console.get(path)
        expected = 403 if path == "/audit" and role != Role.ADMIN else 200
        assert answer.status_code == expected, (path, answer.text[:300])
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        # Nothing from another site: every script and sheet is the hub's own.
        for src in re.findall(r'(?:src|href)="([^"]+)"', answer.text):
            assert not src.startswith(("http:", "https:", "//")), (path, src)
        assert "<script>" not in answer.text
        assert " style=" not in answer.text


def test_a_user_changes_their_own_password_and_second_factor(hub: Hub, console: TestClient) -> None:
    hub.users.create("vic", Role.VIEWER, PASSWORD)
    assert sign_in(console, "vic") == 303
    csrf = {CSRF_HEADER: page_csrf(console)}
    wrong = console.post(
        "/api/v1/auth/me", json={"current_password": "nope", "totp": True}, headers=csrf
    )
    assert wrong.status_code == 401
    assert not hub.users.get("vic").totp
    made = console.post(
        "/api/v1/auth/me", json={"current_password": PASSWORD, "totp": True}, headers=csrf
    )
    assert made.status_code == 200, made.text
    uri = made.json()["totp_uri"]
    assert uri.startswith("otpauth://")
    assert hub.users.get("vic").totp
    new = "a new and long password"
    changed = console.post(
        "/api/v1/auth/me",
        json={"current_password": PASSWORD, "new_password": new},
        headers=csrf,
    )
    assert changed.json()["sessions_ended"] is True
    assert console.get("/").status_code == 303  # this session ended with the change
    console.cookies.clear()
    assert sign_in(console, "vic", new) == 401  # the second factor is now required
    assert sign_in(console, "vic", new, totp_now(uri)) == 303


def test_guessing_the_current_password_is_limited_like_a_login(
    hub: Hub, console: TestClient
) -> None:
    hub.users.create("vic", Role.VIEWER, PASSWORD)
    assert sign_in(console, "vic") == 303
    csrf = {CSRF_HEADER: page_csrf(console)}
    body = {"current_password": "a guess", "totp": True}
    answers = [
        console.post("/api/v1/auth/me", json=body, headers=csrf).status_code
        for _ in range(hub.settings.login_failures_per_user + 1)
    ]
    assert answers == [401] * hub.settings.login_failures_per_user + [429]
    assert not hub.users.get("vic").totp
