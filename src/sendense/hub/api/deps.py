"""Dependencies shared by the routers: the hub, its read side, and the bearer-token
check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sendense.hub.api.queries import Queries
from sendense.hub.service import Hub

_bearer = HTTPBearer(auto_error=False, description="API token printed at the hub's first start")


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]


def get_queries(hub: HubDep) -> Queries:
    return Queries(hub.db)


QueriesDep = Annotated[Queries, Depends(get_queries)]


def require_token(
    hub: HubDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    return hub.tokens.verify(credentials.credentials if credentials else None)
