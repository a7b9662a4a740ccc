"""Whole-VM restore to vCenter, the hub's half: a restore point becomes a new VM
(or replaces a powered-off one) through the node next to the vCenter.

`submit` refuses bad input at once and changes nothing (an unknown or unfinished
point, no layout, and whatever the node's check refuses: a name in use, a
running VM, an unknown datastore or one without room). Then a task (kind
`restore`) serves the point's disks read-only over NBD (an instant access, a
throwaway overlay per disk), has the node create the VM and write the disks, follows its
progress, and closes the access in every outcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from sendense.common.contract import (
    ControllerInventory,
    DiskLayout,
    RestoreCheckRequest,
    RestoreCheckResponse,
    RestoreJobStatus,
    RestoreStartRequest,
    VmLayout,
)
from sendense.common.errors import (
    Conflict,
    InvalidInput,
    NodeTaskEnded,
    TaskNotRunning,
)
from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, JobState, TaskKind, VmDisk
from sendense.hub.nodes.client import NodeClient, NodeConnector
from sendense.hub.nodes.registry import NodeInfo
from sendense.hub.nodes.vcenters import VcenterService
from sendense.hub.restore.instant_access import AccessInfo, AccessService
from sendense.hub.restore.points import restorable_point
from sendense.hub.tasks.node_task import follow_node_task
from sendense.hub.tasks.runner import TaskRunner, split_log
from sendense.hub.tasks.task_log import TaskLogs

log = logging.getLogger(__name__)
# vSphere's SCSI numbering: controller 1000 + bus, disk 2000 + 16 x bus + unit.
_SCSI_DISKS = range(2000, 2000 + 4 * 16)
DERIVED = (
    "the restore point records no layout: SCSI controllers and units were derived from the "
    "disk keys, paravirtual SCSI assumed"
)


@dataclass(frozen=True)
class RestoreVmRequest:
    restore_point_id: str
    name: str
    datastore: str | None = None
    folder: str | None = None
    force: bool = False
    power_on: bool = False
    vcenter: str | None = None


@dataclass(frozen=True)
class RestoreVmQueued:
    job_id: str
    plan: RestoreCheckResponse
    warnings: list[str]


def point_vm_disks(s: Session, vm_id: str) -> list[VmDisk]:
    return list(s.scalars(select(VmDisk).where(VmDisk.vm_id == vm_id)))


def derive_layout(
    disks: list[tuple[int, int]], paths: dict[int, str | None] | None = None
) -> VmLayout | None:
    """A layout for a point recorded without one, from (disk key, capacity):
    possible only when every key follows the SCSI numbering. The controller type
    is not known: paravirtual is assumed. `paths` (the disks' last known
    datastore paths) give the default datastore."""
    paths = paths or {}
    if not disks or any(key not in _SCSI_DISKS for key, _ in disks):
        return None
    buses = sorted({(key - 2000) // 16 for key, _ in disks})
    return VmLayout(
        controllers=[
            ControllerInventory(key=1000 + bus, type="ParaVirtualSCSIController", bus_number=bus)
            for bus in buses
        ],
        disks=[
            DiskLayout(
                key=key,
                controller_key=1000 + (key - 2000) // 16,
                unit_number=(key - 2000) % 16,
                capacity_bytes=capacity,
                datastore_path=paths.get(key),
            )
            for key, capacity in disks
        ],
    )


class VmRestoreRunner(TaskRunner[RestoreJobStatus]):
    name = "restore"

    def __init__(
        self,
        db: Database,
        access: AccessService,
        vcenters: VcenterService,
        nodes: NodeConnector,
        *,
        workers: int = 4,
        poll: float = 0.25,
        node_timeout: float = 60.0,
        logs: TaskLogs | None = None,
    ) -> None:
        super().__init__(db, workers, logs=logs)
        self.access = access
        self.vcenters = vcenters
        self.nodes = nodes
        self.poll = poll
        self.node_timeout = node_timeout

    def layout(self, point_id: str) -> tuple[VmLayout, str, list[str]]:
        """The point's layout, its VM's id, and warnings (a derived layout)."""
        with self.db.session() as s:
            point = restorable_point(s, point_id)
            recorded, vm_id = point.layout, point.vm_id
            disks = [(d.disk_key, d.virtual_size) for d in point.disks]
            paths = {d.disk_key: d.datastore_path for d in point_vm_disks(s, vm_id)}
        if recorded is not None:
            layout = VmLayout.model_validate(recorded)
            if sorted(d.key for d in layout.disks) != sorted(k for k, _ in disks):
                raise Conflict(f"restore point {point_id}: its layout and its disks disagree")
            return layout, vm_id, []
        derived = derive_layout(disks, paths)
        if derived is None:
            raise Conflict(
                f"restore point {point_id} has no recorded disk layout (it was made before "
                "layouts were kept) and its disk keys do not show one: export its disks instead"
            )
        return derived, vm_id, [DERIVED]

    def submit(self, req: RestoreVmRequest) -> RestoreVmQueued:
        layout, vm_id, warnings = self.layout(req.restore_point_id)
        login, node = self.vcenters.login(req.vcenter)
        try:
            check = RestoreCheckRequest(
                **login.model_dump(),
                vm_name=req.name,
                datastore=req.datastore,
                folder=req.folder,
                force=req.force,
                power_on=req.power_on,
                layout=layout,
            )
        except ValidationError as exc:
            raise InvalidInput("; ".join(str(e["msg"]) for e in exc.errors())) from None
        client = self._client(node)
        try:
            plan = client.check_restore(check)
        finally:
            client.close()
        # The task goes exactly where the check looked (a default datastore included).
        check = check.model_copy(update={"datastore": plan.datastore, "folder": plan.folder})
        with self.db.session() as s:
            job = Job(vm_id=vm_id, kind=TaskKind.RESTORE, state=JobState.QUEUED)
            s.add(job)
            s.flush()
            task_id = job.id
        self.queue(task_id, lambda: self._restore(task_id, req.restore_point_id, check, node))
        log.info(
            "restore queued task=%s restore_point=%s vm=%s datastore=%s replaces=%s",
            task_id,
            req.restore_point_id,
            req.name,
            plan.datastore,
            plan.replaces,
        )
        return RestoreVmQueued(task_id, plan, warnings)

    def _client(self, node: str) -> NodeClient:
        return self.nodes.open(node)

    def _reader(self, node: str) -> NodeInfo | None:
        """The node whose tunnel alone reaches the restore's exports."""
        return self.nodes.registry.get(node)

    def _restore(self, task_id: str, point_id: str, check: RestoreCheckRequest, node: str) -> None:
        access: AccessInfo | None = None
        client = self._client(node)
        try:
            access = self.access.open(point_id, purpose="restore", node=self._reader(node))
            targets = ",".join(f"{d.disk_key}:{d.uri}" for d in access.disks)
            request = RestoreStartRequest(**dict(check), job_id=task_id, nbd_targets=targets)
            client.start_restore(request)
            status = self._follow(client, task_id)
        finally:
            client.close()
            if access is not None:
                self.access.close(access.id)
        if status.state != "complete":
            raise NodeTaskEnded(status.state, status.error, what="restore")
        for warning in status.warnings:
            log.warning("restore task=%s: %s", task_id, warning)
        log.info("restore complete task=%s vm=%s", task_id, check.vm_name)

    def _follow(self, client: NodeClient, task_id: str) -> RestoreJobStatus:
        def check() -> None:
            if self._ended(task_id):  # the hub is stopping: the node's reads fail next
                client.cancel_restore(task_id)
                raise TaskNotRunning(task_id, "the hub stopped the restore")

        return follow_node_task(
            lambda: client.restore_job(task_id, self.node_lines.seen(task_id)),
            client.name,
            poll=self.poll,
            node_timeout=self.node_timeout,
            record=lambda status: self.record_node(task_id, *split_log(status)),
            check=check,
        )

    def _ended(self, task_id: str) -> bool:
        with self.db.session() as s:
            job = s.get(Job, task_id)
            return job is None or job.state not in (JobState.QUEUED, JobState.RUNNING)
