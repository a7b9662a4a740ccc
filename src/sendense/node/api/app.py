"""The node's FastAPI application: health, inventory, the seed's backup/start, jobs,
and restores of whole VMs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sendense import __version__
from sendense.common.api_errors import install_error_handlers
from sendense.common.body_limit import BodyLimit
from sendense.common.contract import (
    ACTIVE_STATES,
    BackupStartRequest,
    BackupStartResponse,
    DiscoverResponse,
    InventoryRequest,
    NodeJobStatus,
    RestoreCheckRequest,
    RestoreCheckResponse,
    RestoreJobStatus,
    RestoreStartRequest,
    SnapshotHuntResponse,
    TaskStatus,
    VcenterLogin,
    VmInventory,
)
from sendense.common.logging import register_secret
from sendense.nbd.errors import NbdError, NbdUriError
from sendense.node import task_log
from sendense.node.auth import NodeTokens
from sendense.node.backup_tasks import BackupTasks
from sendense.node.config import NodeSettings
from sendense.node.restore_tasks import RestoreTasks
from sendense.node.vmware.connection import Vcenter
from sendense.node.vmware.inventory import describe_fresh, find_vm, list_vms


@dataclass
class Node:
    settings: NodeSettings
    tokens: NodeTokens
    runner: BackupTasks
    restores: RestoreTasks


_bearer = HTTPBearer(auto_error=False)
T = TypeVar("T")


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


NodeDep = Annotated[Node, Depends(_node)]


def _auth(
    node: NodeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    return node.tokens.verify(credentials.credentials if credentials else None)


public = APIRouter(prefix="/api/v1", tags=["system"])
router = APIRouter(prefix="/api/v1", dependencies=[Depends(_auth)])


@public.get("/health")
def health(node: NodeDep) -> dict[str, str | int]:
    running = sum(1 for j in node.runner.jobs.values() if j.status.state == "running")
    running += sum(1 for j in node.restores.jobs.values() if j.status.state == "running")
    return {"status": "ok", "version": __version__, "role": "node", "running_jobs": running}


async def _with_vcenter(node: Node, login: VcenterLogin, work: Callable[[Vcenter], T]) -> T:
    """Run `work` in a thread on a session of this login: the node's kept one
    (the backup the hub starts next uses it too), or a new one (pinned TLS)."""
    async with node.runner.vcenter(login) as vc:
        return await asyncio.to_thread(work, vc)


@router.post("/vms/discover", tags=["inventory"])
async def discover(node: NodeDep, login: VcenterLogin) -> DiscoverResponse:
    return await _with_vcenter(node, login, lambda vc: DiscoverResponse(vms=list_vms(vc)))


@router.post("/vms/inventory", tags=["inventory"])
async def inventory(node: NodeDep, body: InventoryRequest) -> VmInventory:
    """One VM and its disks: what the hub plans a backup from."""
    return await _with_vcenter(node, body, lambda vc: describe_fresh(find_vm(vc, body.vm_name)))


@router.post("/snapshots/hunt", tags=["backup"])
async def hunt_snapshots(node: NodeDep, login: VcenterLogin) -> SnapshotHuntResponse:
    """The hub asks this periodically with its login for the vCenter: a node that
    was killed mid-backup and restarted removes its dead jobs' snapshots without
    waiting for the next backup (it keeps no vCenter password of its own)."""
    register_secret(login.vcenter_password.get_secret_value())
    thumbprint = login.vcenter_thumbprint or node.settings.vcenter_thumbprints.get(
        login.vcenter_host
    )
    return await node.runner.hunter.hunt_with(
        login.vcenter_host, login.vcenter_user, login.vcenter_password, thumbprint
    )


def _started(status: TaskStatus) -> BackupStartResponse:
    """A start's answer; a repeated start gets the same one (or how its job ended)."""
    state = "running" if status.state in ACTIVE_STATES else status.state
    return BackupStartResponse(job_id=status.job_id, status=state)


@router.post("/backup/start", status_code=202, tags=["backup"])
async def backup_start(node: NodeDep, body: BackupStartRequest) -> BackupStartResponse:
    """The seed's body; without a job_id the node makes one. A start repeated with
    the same job_id and request answers that job, not a second one."""
    return _started(node.runner.start(body).status)


@router.get("/jobs", tags=["backup"])
async def list_jobs(node: NodeDep) -> list[NodeJobStatus]:
    """Every job, without its log lines (a job's own status has them)."""
    return [j.status.model_copy(update={"log": []}) for j in node.runner.jobs.values()]


LogAfter = Annotated[
    int, Query(ge=0, description="only the log lines numbered after this (the hub's last)")
]
Status = TypeVar("Status", bound=TaskStatus)


def _lines_after(status: Status, log_after: int) -> Status:
    if not log_after:
        return status
    return status.model_copy(update={"log": [x for x in status.log if x.seq > log_after]})


@router.get("/jobs/{job_id}", tags=["backup"])
async def get_job(node: NodeDep, job_id: str, log_after: LogAfter = 0) -> NodeJobStatus:
    return _lines_after(node.runner.get(job_id).status, log_after)


@router.post("/jobs/{job_id}/cancel", tags=["backup"])
async def cancel_job(node: NodeDep, job_id: str) -> NodeJobStatus:
    return node.runner.cancel(job_id).status


@router.post("/restore/check", tags=["restore"])
async def restore_check(node: NodeDep, body: RestoreCheckRequest) -> RestoreCheckResponse:
    """Where a restore would put the VM, or why it may not: changes nothing."""
    return await node.restores.check(body)


@router.post("/restore/start", status_code=202, tags=["restore"])
async def restore_start(node: NodeDep, body: RestoreStartRequest) -> BackupStartResponse:
    """Checked first: a refusal comes back here, with nothing made in vCenter."""
    return _started((await node.restores.start(body)).status)


@router.get("/restore/jobs/{job_id}", tags=["restore"])
async def get_restore_job(node: NodeDep, job_id: str, log_after: LogAfter = 0) -> RestoreJobStatus:
    return _lines_after(node.restores.get(job_id).status, log_after)


@router.post("/restore/jobs/{job_id}/cancel", tags=["restore"])
async def cancel_restore_job(node: NodeDep, job_id: str) -> RestoreJobStatus:
    return node.restores.cancel(job_id).status


def create_node_app(settings: NodeSettings) -> FastAPI:
    task_log.install()
    runner = BackupTasks(settings)
    node = Node(settings, NodeTokens(settings.data_dir), runner, RestoreTasks(settings, runner))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The snapshot hunter: removes dead jobs' recorded snapshots, periodically.
        hunter = asyncio.get_running_loop().create_task(node.runner.hunter.run_forever())
        yield
        hunter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hunter
        # Stopping cancels running jobs; each removes its snapshot on the way out,
        # a restore the VM it was making.
        await node.runner.shutdown()
        await node.restores.shutdown()
        await node.runner.sessions.close()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and
    # nothing here loads from another site. The schema is /openapi.json.
    app = FastAPI(
        title="Sendense node", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.node = node
    app.add_middleware(BodyLimit)
    install_error_handlers(
        app,
        {NbdUriError: (422, "invalid_input"), NbdError: (502, "nbd_error")},
        authenticate=node.tokens.verify,
    )
    app.include_router(public)
    app.include_router(router)
    return app
