"""API tokens with roles, expiry, last use and revocation, and the audit log of
every state-changing call: append-only, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError

from sendense.hub.api.app import create_app
from sendense.hub.auth.roles import Role
from sendense.hub.auth.tokens import LAST_USED_EVERY
from sendense.hub.db.models import ApiToken
from sendense.hub.service import Hub


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_admin_creates_lists_and_revokes_tokens(hub: Hub) -> None:
    admin = hub.tokens.create("first", created_by="first-start")
    with TestClient(create_app(hub), headers=bearer(admin)) as client:
        created = client.post(
            "/api/v1/tokens", json={"name": "ci", "role": "viewer", "expires_in_s": 3600}
        )
        assert created.status_code == 201, created.text
        made = created.json()
        secret = made["token"]
        assert secret.startswith("sdh_")
        assert made["role"] == "viewer"
        assert made["expires_at"] is not None
        assert made["created_by"].startswith("token:")
        listed = client.get("/api/v1/tokens")
        assert listed.status_code == 200
        assert secret not in listed.text
        assert "token_hash" not in listed.text
        assert {t["name"]: t["role"] for t in listed.json()} == {"first": "admin", "ci": "viewer"}
        # the viewer reads, and may not write
        assert client.get("/api/v1/repositories", headers=bearer(secret)).status_code == 200
        refused = client.post("/api/v1/backups", json={"vm": "x"}, headers=bearer(secret))
        assert refused.status_code == 403
        assert "viewer" in refused.json()["message"]
        assert client.get("/api/v1/tokens", headers=bearer(secret)).status_code == 403
        me = client.get("/api/v1/tokens/current", headers=bearer(secret)).json()
        assert me["name"] == "ci"
        assert me["last_used_at"] is not None
        revoked = client.delete(f"/api/v1/tokens/{made['id']}")
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        gone = client.get("/api/v1/repositories", headers=bearer(secret))
        assert gone.status_code == 401
        assert "revoked" in gone.json()["message"]
        assert client.delete("/api/v1/tokens/nope").status_code == 404
        bad = client.post("/api/v1/tokens", json={"name": "x", "role": "root"})
        assert bad.status_code == 422
        assert bad.json()["message"]


def test_the_last_admin_token_cannot_be_revoked_but_the_initial_one_can(hub: Hub) -> None:
    initial = hub.tokens.create("admin", created_by="first-start")
    with TestClient(create_app(hub), headers=bearer(initial)) as client:
        own = client.get("/api/v1/tokens/current").json()["id"]
        alone = client.delete(f"/api/v1/tokens/{own}")
        assert alone.status_code == 409
        assert "last active admin token" in alone.json()["message"]
        operator = client.post("/api/v1/tokens", json={"name": "op", "role": "operator"}).json()
        assert client.delete(f"/api/v1/tokens/{own}").status_code == 409  # not an admin
        second = client.post("/api/v1/tokens", json={"name": "ops", "role": "admin"}).json()
        done = client.delete(f"/api/v1/tokens/{own}")
        assert done.status_code == 200
        assert client.get("/api/v1/tokens").status_code == 401  # the initial token is gone
        client.headers.update(bearer(second["token"]))
        states = {t["name"]: t["active"] for t in client.get("/api/v1/tokens").json()}
        assert states == {"admin": False, "op": True, "ops": True}
        assert client.delete(f"/api/v1/tokens/{operator['id']}").status_code == 200


def test_an_expired_token_is_401_and_last_use_is_written_once_a_minute(hub: Hub) -> None:
    info, secret = hub.tokens.issue("short", Role.OPERATOR, timedelta(hours=1))
    with TestClient(create_app(hub), headers=bearer(secret)) as client:
        assert client.get("/api/v1/jobs").status_code == 200
        first = hub.tokens.get(info.id).last_used_at
        assert first is not None
        assert client.get("/api/v1/jobs").status_code == 200
        assert hub.tokens.get(info.id).last_used_at == first  # not a write per request
        earlier = datetime.now(UTC) - LAST_USED_EVERY - timedelta(seconds=1)
        with hub.db.session() as s:
            s.execute(update(ApiToken).where(ApiToken.id == info.id).values(last_used_at=earlier))
        assert client.get("/api/v1/jobs").status_code == 200
        later = hub.tokens.get(info.id).last_used_at
        assert later is not None
        assert later > earlier + timedelta(seconds=30)
        past = datetime.now(UTC) - timedelta(seconds=1)
        with hub.db.session() as s:
            s.execute(update(ApiToken).where(ApiToken.id == info.id).values(expires_at=past))
        expired = client.get("/api/v1/jobs")
        assert expired.status_code == 401
        assert "expired" in expired.json()["message"]


def test_state_changing_calls_are_audited_refused_ones_too(hub: Hub, repo_dir: Path) -> None:
    admin = hub.tokens.create("boss")
    viewer = hub.tokens.create("eyes", Role.VIEWER)
    with TestClient(create_app(hub), headers=bearer(admin)) as client:
        added = client.post("/api/v1/repositories", json={"path": str(repo_dir), "name": "r"})
        assert added.status_code == 201
        assert client.post("/api/v1/nodes/n1/revoke", json={}).status_code == 404
        denied = client.post("/api/v1/nodes/n1/revoke", json={}, headers=bearer(viewer))
        assert denied.status_code == 403
        anonymous = client.post("/api/v1/verify", json={"target": "x"}, headers=bearer("bad"))
        assert anonymous.status_code == 401
        client.get("/api/v1/repositories")  # reads are not logged
        assert client.get("/api/v1/audit", headers=bearer(viewer)).status_code == 403
        entries = client.get("/api/v1/audit").json()
        assert [
            (e["actor"], e["role"], e["action"], e["status"], e["outcome"]) for e in entries
        ] == [
            (None, None, "/api/v1/verify", 401, "unauthenticated"),
            ("eyes", "viewer", "/api/v1/nodes/{name}/revoke", 403, "forbidden"),
            ("boss", "admin", "/api/v1/nodes/{name}/revoke", 404, "failed"),
            ("boss", "admin", "/api/v1/repositories", 201, "success"),
        ]
        assert entries[1]["target"] == {"name": "n1"}
        assert entries[1]["method"] == "POST"
        assert entries[0]["client"] == "testclient"
        assert entries[3]["token_id"] is not None
        page = client.get("/api/v1/audit", params={"limit": 2, "offset": 1}).json()
        assert [e["id"] for e in page] == [entries[1]["id"], entries[2]["id"]]
        assert client.get("/api/v1/audit", params={"limit": 0}).status_code == 422
        # An offset past 64 bits is a clear 422, not the database's overflow (a 500).
        huge = client.get("/api/v1/audit", params={"offset": 2**115})
        assert huge.status_code == 422, huge.text


def test_the_audit_log_is_append_only(db_hub: Hub) -> None:
    db_hub.audit_log.append(None, "POST", "/api/v1/x", {}, "127.0.0.1", 401)
    for statement in ("UPDATE audit_log SET status = 200", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), db_hub.db.engine.begin() as conn:
            conn.execute(text(statement))
    db_hub.audit_log.append(None, "DELETE", "/api/v1/y", {}, None, 404)
    assert [e.action for e in db_hub.audit_log.entries()] == ["/api/v1/y", "/api/v1/x"]
