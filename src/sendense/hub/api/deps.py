"""Dependencies shared by the routers: the hub, its read side, and `authorize`,
the bearer-token and role check every authenticated route runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sendense.common.errors import Forbidden
from sendense.hub.api.queries import Queries
from sendense.hub.auth.cookies import COOKIE, CSRF_HEADER, check_csrf, csrf_token
from sendense.hub.auth.roles import ROLE_PERMISSIONS, Permission, allows, route_permission
from sendense.hub.auth.tokens import Principal
from sendense.hub.service import Hub

_bearer = HTTPBearer(auto_error=False, description="API token printed at the hub's first start")


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]


def get_queries(hub: HubDep) -> Queries:
    return Queries(hub.db)


QueriesDep = Annotated[Queries, Depends(get_queries)]


def authorize(
    request: Request,
    hub: HubDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Who calls (401 without a valid token), and whether the route's permission in
    `sendense.hub.auth.roles.ROUTES` is in their role (403 otherwise; a route with
    no permission declared is refused to everyone). A browser of the console sends
    its session in a cookie instead of the header, and the CSRF token with every
    request that changes something."""
    principal = hub.tokens.verify(caller_secret(request, credentials))
    request.state.principal = principal  # for the audit log, refused calls too
    route = request.scope.get("route")
    path = route.path if isinstance(route, APIRoute) else request.url.path
    permission = route_permission(request.method, path)
    if permission is None:
        raise Forbidden(f"{request.method} {path} declares no permission: refused to every role")
    demand(principal, permission)
    return principal


def caller_secret(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The bearer token, else the console's session cookie (CSRF-checked)."""
    if credentials:
        return credentials.credentials
    cookie = request.cookies.get(COOKIE)
    if cookie:
        check_csrf(request.method, csrf_token(cookie), request.headers.get(CSRF_HEADER))
    return cookie


def demand(principal: Principal, permission: Permission) -> None:
    """403 unless the caller's role has `permission`."""
    if not allows(principal.role, permission):
        roles = " or ".join(r.value for r, p in ROLE_PERMISSIONS.items() if permission in p)
        raise Forbidden(
            f"token {principal.name!r} has role {principal.role.value}, which may not "
            f"{permission.value.replace('_', ' ')} (needs {roles})"
        )


PrincipalDep = Annotated[Principal, Depends(authorize)]
