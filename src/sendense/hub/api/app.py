"""The FastAPI application of the hub: routers, error mapping, and the lifespan
that runs the hub's background loops and stops its tasks in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from sendense import __version__
from sendense.common.api_errors import install_error_handlers
from sendense.common.body_limit import BodyLimit
from sendense.hub.api.audit_trail import AuditTrail
from sendense.hub.api.routes import (
    access,
    audit,
    auth,
    backups,
    copies,
    exports,
    file_restore,
    health,
    jobs,
    metrics,
    nodes,
    notifications,
    policies,
    ports,
    prune,
    repositories,
    restore_points,
    schedules,
    tasks,
    tokens,
    users,
    vcenters,
    verify,
    vms,
)
from sendense.hub.console import site as console
from sendense.hub.service import Hub
from sendense.nbd.errors import NbdError, NbdUriError

log = logging.getLogger(__name__)
HOUSEKEEPING_S = 3600.0  # old tasks go, repositories' usage is sampled: at start-up, hourly
EVICT_S = 60.0  # finished tasks' progress leaves memory


def create_app(hub: Hub) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        interval = min(5.0, hub.settings.access_idle_s / 4)
        loops = [
            asyncio.create_task(
                _every(interval, _close_idle_access(hub), "closing idle accesses", first=False)
            ),
            asyncio.create_task(
                _every(
                    min(5.0, hub.settings.file_restore_idle_s / 4),
                    hub.files.expire_idle,
                    "closing idle file-restore sessions",
                    first=False,
                )
            ),
            asyncio.create_task(
                _every(hub.settings.schedule_tick_s, hub.scheduler.tick, "checking schedules")
            ),
            asyncio.create_task(
                _every(
                    hub.settings.snapshot_sweep_s,
                    hub.snapshot_sweep.run,
                    "sweeping nodes' leftover snapshots",
                    first=False,
                )
            ),
            asyncio.create_task(
                _every(hub.settings.notify_tick_s, hub.notifier.tick, "sending notifications")
            ),
            asyncio.create_task(_every(HOUSEKEEPING_S, hub.housekeeping, "housekeeping")),
            asyncio.create_task(
                _every(hub.settings.copy_tick_s, hub.copies.sweep, "offsite copies", first=False)
            ),
            asyncio.create_task(
                _every(EVICT_S, hub.evict_progress, "evicting finished progress", first=False)
            ),
        ]
        yield
        for loop in loops:
            loop.cancel()
        # A loop's work already in a thread runs to its end (a thread cannot be
        # cancelled): wait for it, or it would still hold a database connection
        # when the hub closes the database.
        await asyncio.gather(*loops, return_exceptions=True)
        hub.stop_tasks()
        # A graceful stop leaves nothing running: exports stopped, tasks failed,
        # the tunnel's sshd gone. (uvicorn re-raises SIGTERM once the app has shut
        # down, so code after uvicorn.run() would never see it.)
        await run_in_threadpool(hub.reconcile, "the hub was stopped during the job")
        await run_in_threadpool(hub.tunnel.stop)

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and
    # nothing here loads from another site. The schema is /openapi.json.
    app = FastAPI(
        title="Sendense hub", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.hub = hub
    app.state.enroll_limiter = nodes.enroll_limiter(hub)
    app.state.login_limits = auth.login_limits(hub)
    app.add_middleware(BodyLimit)
    app.add_middleware(AuditTrail, audit=hub.audit_log)
    install_error_handlers(
        app,
        {NbdUriError: (422, "invalid_input"), NbdError: (502, "nbd_error")},
        authenticate=hub.tokens.verify,
    )
    app.include_router(health.public)
    app.include_router(nodes.public)
    app.include_router(auth.public)
    for module in (
        ports,
        exports,
        repositories,
        vms,
        restore_points,
        file_restore,
        jobs,
        backups,
        vcenters,
        nodes,
        verify,
        policies,
        prune,
        schedules,
        access,
        tokens,
        audit,
        metrics,
        users,
        auth,
        notifications,
        tasks,
        copies,
    ):
        app.include_router(module.router)
    console.install(app)
    return app


def _close_idle_access(hub: Hub) -> Callable[[], object]:
    """Close instant accesses no client has used for `access_idle_s`."""
    return lambda: hub.access.expire_idle(hub.settings.access_idle_s)


async def _every(
    seconds: float, work: Callable[[], object], what: str, *, first: bool = True
) -> None:
    """Run `work` in the thread pool every `seconds` (at once when `first`: a
    schedule missed while the hub was down runs at start-up)."""
    if not first:
        await asyncio.sleep(seconds)
    while True:
        try:
            await run_in_threadpool(work)
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(seconds)
