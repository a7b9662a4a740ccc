"""Roles, enforced on every route: each authenticated route declares its permission
in `sendense.hub.auth.roles.ROUTES`, and a token of each role (and none) gets
exactly what the table says. The table in docs/security.md is the same."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sendense.hub.api.app import create_app
from sendense.hub.auth.roles import ROLE_PERMISSIONS, ROUTES, Permission, Role, allows
from sendense.hub.service import Hub

DOCS = Path(__file__).resolve().parents[1] / "docs" / "security.md"
PUBLIC = {
    ("GET", "/api/v1/health"),
    ("POST", "/api/v1/nodes/enroll"),
    ("POST", "/api/v1/auth/login"),
}


def api_routes(app: FastAPI) -> Iterator[tuple[str, str, bool]]:
    """(method, path template, whether it takes a token) of every route, from the
    OpenAPI schema: a route that runs `authorize` asks for the bearer token."""
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, bool(operation.get("security"))


def test_every_authenticated_route_declares_a_permission_and_only_public_ones_are_open(
    hub: Hub,
) -> None:
    app = create_app(hub)
    seen = set()
    open_routes = set()
    for method, path, with_token in api_routes(app):
        seen.add((method, path))
        if not with_token:
            open_routes.add((method, path))
        else:
            assert (method, path) in ROUTES, f"{method} {path} declares no permission"
    assert open_routes == PUBLIC
    assert set(ROUTES) == seen - PUBLIC  # no permission for a route that is gone
    assert len(seen) > 40


def test_every_route_with_every_role(hub: Hub) -> None:
    """Each route with dummy parameters and an empty body: a role without the
    route's permission gets 403, one with it never 401 or 403 (a 404 or 422 for
    the dummy values is fine), and no token gets 401."""
    tokens = {role: hub.tokens.create(role.value, role) for role in Role}
    with TestClient(create_app(hub)) as client:
        for method, path, _ in api_routes(client.app):  # type: ignore[arg-type]
            if (method, path) in PUBLIC:
                continue
            url = re.sub(r"\{[^}]+\}", "1", path)
            permission = ROUTES[(method, path)]
            body: dict[str, object] | None = {} if method in ("POST", "PUT", "PATCH") else None
            bare = client.request(method, url, json=body)
            assert bare.status_code == 401, (method, path)
            for role, token in tokens.items():
                headers = {"Authorization": f"Bearer {token}"}
                response = client.request(method, url, json=body, headers=headers)
                what = (role.value, method, path, response.status_code, response.text[:200])
                if allows(role, permission):
                    assert response.status_code not in (401, 403), what
                    assert response.status_code < 500, what
                else:
                    assert response.status_code == 403, what
                    assert response.json()["error"] == "forbidden"
                    assert role.value in response.json()["message"]


def test_the_role_table_in_the_docs_is_the_code_s() -> None:
    text = DOCS.read_text()
    section = text.split("## Roles", 1)[1].split("\n## ", 1)[0]
    documented: dict[Role, set[Permission]] = {role: set() for role in Role}
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        permission = Permission(cells[0].strip("`"))
        for role, cell in zip((Role.ADMIN, Role.OPERATOR, Role.VIEWER), cells[2:5], strict=True):
            if cell == "yes":
                documented[role].add(permission)
    assert len(rows) == len(Permission)
    assert documented == {role: set(p) for role, p in ROLE_PERMISSIONS.items()}
    for permission in Permission:  # each permission's routes are listed under it
        for (method, path), needed in ROUTES.items():
            if needed is permission and permission is not Permission.RESTORE_OVER:
                assert f"{method} {path.removeprefix('/api/v1')}" in section, (method, path)


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.VIEWER])
def test_restoring_over_an_existing_vm_is_admin_only(hub: Hub, role: Role) -> None:
    token = hub.tokens.create(role.value, role)
    with TestClient(create_app(hub), headers={"Authorization": f"Bearer {token}"}) as client:
        body = {"name": "vm1-restored", "force": True}
        response = client.post("/api/v1/restore-points/nope/restore-vm", json=body)
        if role is Role.OPERATOR:
            assert response.status_code == 403
            assert "restore over" in response.json()["message"]
            # without force the operator gets past the role check: the point is unknown
            body["force"] = False
            assert (
                client.post("/api/v1/restore-points/nope/restore-vm", json=body).status_code == 404
            )
        else:
            assert response.status_code == 403


def test_a_viewer_sees_no_secret(hub: Hub) -> None:
    admin = hub.tokens.create("admin")
    viewer = hub.tokens.create("viewer", Role.VIEWER)
    with TestClient(create_app(hub)) as client:
        listed = client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {viewer}"})
        assert listed.status_code == 403
        mine = client.get("/api/v1/tokens/current", headers={"Authorization": f"Bearer {viewer}"})
        assert mine.json()["role"] == "viewer"
        assert viewer not in mine.text
        assert "token_hash" not in mine.text
        for path in ("/api/v1/vcenters", "/api/v1/nodes"):
            answer = client.get(path, headers={"Authorization": f"Bearer {viewer}"})
            assert answer.status_code == 200
        assert admin not in listed.text
