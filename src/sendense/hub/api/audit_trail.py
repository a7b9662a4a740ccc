"""Every state-changing request (any method but GET, HEAD and OPTIONS), and every
download of a guest's data (AUDITED_READS), leaves a
row in the audit log, written before the answer goes out (a caller that has its
answer finds the row): refused ones (401, 403, 4xx) too, with
the caller unknown when the token was not valid. A route names a target its path
does not hold (the user a login or a creation is for) in
`request.state.audit_target`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sendense.hub.auth.audit_log import AuditLog
from sendense.hub.auth.tokens import Principal

log = logging.getLogger(__name__)
READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})
# Reads that take a guest's data out of the hub: who downloaded what is kept.
AUDITED_READS = frozenset(
    {
        "/api/v1/restore-points/{point_id}/browse/download",
        "/api/v1/restore-points/{point_id}/disks/{disk_key}/download",
    }
)


class AuditTrail:
    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        recorded = False

        async def record(status: int) -> None:
            nonlocal recorded
            route = scope.get("route")
            audited = isinstance(route, APIRoute) and route.path in AUDITED_READS
            if not recorded and (scope["method"] not in READ_ONLY or audited):
                recorded = True
                await self._record(scope, status)

        async def noted(message: Message) -> None:
            if message["type"] == "http.response.start":
                await record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            await record(500)  # the app raised before it answered

    async def _record(self, scope: Scope, status: int) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        principal = state.get("principal")
        route = scope.get("route")
        action = route.path if isinstance(route, APIRoute) else str(scope.get("path", ""))
        client = scope.get("client")
        try:
            await run_in_threadpool(
                self.audit.append,
                principal if isinstance(principal, Principal) else None,
                scope["method"],
                action,
                dict(scope.get("path_params") or {}) | dict(state.get("audit_target") or {}),
                client[0] if client else None,
                status,
            )
        except Exception:
            # The call is done and answered: a lost audit row is reported, loudly.
            log.exception("could not write the audit log for %s %s", scope["method"], action)
