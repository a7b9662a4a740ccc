"""Whole-VM restore to vCenter, the hub's half: a restore point becomes a new VM
(or replaces a powered-off one) through the node next to the vCenter.

`submit` refuses bad input at once and changes nothing (an unknown or unfinished
point, no layout, and whatever the node's check refuses: a name in use, a
running VM, an unknown datastore or one without room). Then a job (kind
"restore") serves the point's disks read-only over NBD (access.py, a throwaway
overlay per disk), has the node create the VM and write the disks, follows its
progress, and closes the access in every outcome.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import select, update
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
    NotFound,
    SendenseError,
)
from sendense.hub.access import AccessInfo
from sendense.hub.db.models import Job, JobState, PointStatus, RestorePoint, VmDisk, utcnow
from sendense.hub.follow import follow
from sendense.hub.node_client import NodeClient
from sendense.hub.service import Hub
from sendense.hub.vcenters import VcenterService

log = logging.getLogger(__name__)
KIND = "restore"
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
            DiskLayout(key=key, controller_key=1000 + (key - 2000) // 16,
                       unit_number=(key - 2000) % 16, capacity_bytes=capacity,
                       datastore_path=paths.get(key))
            for key, capacity in disks
        ],
    )  # fmt: skip


class RestoreVmJobs:
    def __init__(self, hub: Hub, poll: float = 0.25, node_timeout: float = 60.0) -> None:
        self.hub = hub
        self.vcenters = VcenterService(hub.db, hub.nodes.box)
        self.poll = poll
        self.node_timeout = node_timeout
        self._progress: dict[str, RestoreJobStatus] = {}
        self._lock = threading.Lock()

    def layout(self, point_id: str) -> tuple[VmLayout, str, list[str]]:
        """The point's layout, its VM's id, and warnings (a derived layout)."""
        with self.hub.db.session() as s:
            point = s.get(RestorePoint, point_id)
            if point is None:
                raise NotFound(f"restore point {point_id} does not exist")
            if point.status != PointStatus.COMPLETE:
                raise Conflict(f"restore point {point_id} is {point.status.value}: not restorable")
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
                **login.model_dump(), vm_name=req.name, datastore=req.datastore,
                folder=req.folder, force=req.force, power_on=req.power_on, layout=layout,
            )  # fmt: skip
        except ValidationError as exc:
            raise InvalidInput("; ".join(str(e["msg"]) for e in exc.errors())) from None
        client = self._client(node)
        try:
            plan = client.check_restore(check)
        finally:
            client.close()
        # The job goes exactly where the check looked (a default datastore included).
        check = check.model_copy(update={"datastore": plan.datastore, "folder": plan.folder})
        with self.hub.db.session() as s:
            job = Job(vm_id=vm_id, kind=KIND, backup_type=KIND, state=JobState.QUEUED)
            s.add(job)
            s.flush()
            job_id = job.id
        threading.Thread(
            target=self._run, args=(job_id, req.restore_point_id, check, node),
            name=f"restore-{job_id[:8]}", daemon=True,
        ).start()  # fmt: skip
        log.info("restore queued job=%s restore_point=%s vm=%s datastore=%s replaces=%s",
                 job_id, req.restore_point_id, req.name, plan.datastore, plan.replaces)  # fmt: skip
        return RestoreVmQueued(job_id, plan, warnings)

    def progress(self, job_id: str) -> RestoreJobStatus | None:
        with self._lock:
            return self._progress.get(job_id)

    def _client(self, node: str) -> NodeClient:
        return NodeClient(self.hub.nodes, node, owns_listener=self.hub.tunnel.owns_listener)

    def _set(self, job_id: str, state: JobState, error: str | None = None) -> bool:
        """Move an active job on; False when something else (a hub stop) ended it."""
        values: dict[str, object] = {"state": state, "error": error}
        values["started_at" if state == JobState.RUNNING else "finished_at"] = utcnow()
        with self.hub.db.session() as s:
            done = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
                .values(**values)
            )
            return getattr(done, "rowcount", 0) == 1

    def _run(self, job_id: str, point_id: str, check: RestoreCheckRequest, node: str) -> None:
        if not self._set(job_id, JobState.RUNNING):
            return
        try:
            self._restore(job_id, point_id, check, node)
        except SendenseError as exc:
            log.warning("restore failed job=%s error=%s", job_id, exc.message)
            self._set(job_id, JobState.FAILED, exc.message)
            return
        except Exception as exc:
            log.exception("restore crashed job=%s", job_id)
            self._set(job_id, JobState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            return
        self._set(job_id, JobState.COMPLETE)
        log.info("restore complete job=%s vm=%s", job_id, check.vm_name)

    def _restore(self, job_id: str, point_id: str, check: RestoreCheckRequest, node: str) -> None:
        access: AccessInfo | None = None
        client = self._client(node)
        try:
            access = self.hub.access.open(point_id, purpose=KIND)
            targets = ",".join(f"{d.disk_key}:{d.uri}" for d in access.disks)
            request = RestoreStartRequest(**dict(check), job_id=job_id, nbd_targets=targets)
            client.start_restore(request)
            status = self._follow(client, job_id)
        finally:
            client.close()
            if access is not None:
                self.hub.access.close(access.id)
        if status.state != "complete":
            raise SendenseError(f"node reported the restore {status.state}: {status.error}")
        for warning in status.warnings:
            log.warning("restore job=%s: %s", job_id, warning)

    def _follow(self, client: NodeClient, job_id: str) -> RestoreJobStatus:
        def record(status: RestoreJobStatus) -> None:
            with self._lock:
                self._progress[job_id] = status

        def check() -> None:
            if self._ended(job_id):  # the hub is stopping: the node's reads fail next
                client.cancel_restore(job_id)
                raise SendenseError("the hub stopped the restore")

        return follow(lambda: client.restore_job(job_id), client.name, poll=self.poll,
                      node_timeout=self.node_timeout, record=record, check=check)  # fmt: skip

    def _ended(self, job_id: str) -> bool:
        with self.hub.db.session() as s:
            job = s.get(Job, job_id)
            return job is None or job.state not in (JobState.QUEUED, JobState.RUNNING)
