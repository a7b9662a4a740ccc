"""The FastAPI application of the hub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from sendense import __version__
from sendense.common.api_errors import install_error_handlers
from sendense.hub.api import (
    routes_backups,
    routes_nodes,
    routes_orchestration,
    routes_policies,
    routes_repositories,
    routes_restore,
    routes_restore_vm,
    routes_system,
    routes_verify,
)
from sendense.hub.orchestrator import Orchestrator
from sendense.hub.policies import PolicyService
from sendense.hub.restore_vm import RestoreVmJobs
from sendense.hub.scheduler import Scheduler
from sendense.hub.service import Hub
from sendense.hub.verify_jobs import VerifyJobs

log = logging.getLogger(__name__)


def create_app(hub: Hub) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        expiry = asyncio.create_task(_expire_idle_access(hub))
        schedules = asyncio.create_task(_run_schedules(scheduler, hub.settings.schedule_tick_s))
        yield
        expiry.cancel()
        schedules.cancel()
        orchestrator.shutdown()
        verify_jobs.shutdown()
        # A graceful stop leaves nothing running: exports stopped, jobs failed,
        # the tunnel's sshd gone. (uvicorn re-raises SIGTERM once the app has shut
        # down, so code after uvicorn.run() would never see it.)
        await run_in_threadpool(hub.reconcile, "the hub was stopped during the job")
        await run_in_threadpool(hub.tunnel.stop)

    app = FastAPI(title="Sendense hub", version=__version__, lifespan=lifespan)
    app.state.hub = hub
    orchestrator = Orchestrator(
        hub, hub.settings.max_jobs, node_timeout=hub.settings.node_timeout_s
    )
    app.state.orchestrator = orchestrator
    verify_jobs = VerifyJobs(hub)
    scheduler = Scheduler(orchestrator, PolicyService(hub.db))
    app.state.scheduler = scheduler
    app.state.restore_vm = RestoreVmJobs(hub, node_timeout=hub.settings.node_timeout_s)
    app.state.verify_jobs = verify_jobs
    install_error_handlers(app)
    app.include_router(routes_system.public)
    app.include_router(routes_system.router)
    app.include_router(routes_repositories.router)
    app.include_router(routes_backups.router)
    app.include_router(routes_nodes.public)
    app.include_router(routes_nodes.router)
    app.include_router(routes_orchestration.router)
    app.include_router(routes_verify.router)
    app.include_router(routes_policies.router)
    app.include_router(routes_restore.router)
    app.include_router(routes_restore_vm.router)
    return app


async def _expire_idle_access(hub: Hub) -> None:
    """Close instant accesses no client has used for `access_idle_s`."""
    interval = min(5.0, hub.settings.access_idle_s / 4)
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(hub.access.expire_idle, hub.settings.access_idle_s)
        except Exception:
            log.exception("closing idle accesses failed")


async def _run_schedules(scheduler: Scheduler, every: float) -> None:
    """Start due policies' runs; the first check is at start-up (a missed run)."""
    while True:
        try:
            await run_in_threadpool(scheduler.tick)
        except Exception:
            log.exception("checking schedules failed")
        await asyncio.sleep(every)
