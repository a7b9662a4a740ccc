"""The hub's main task: one backup of one VM, DESIGN.md steps 1-8.

submit() reserves the VM (a second request gets 409 at once) and queues the task;
a worker (at most `max_jobs` at a time) asks the node for the VM's disks, opens
the exports, starts the node's copy, follows its progress, and finishes (check,
one transaction) or fails (everything removed) the task through the ledger. A
node that stops answering for `node_timeout` seconds fails the task with that
reason.
"""

from __future__ import annotations

import contextlib
import logging

from sendense.common.contract import BackupStartRequest, NodeJobStatus
from sendense.common.errors import NodeTaskEnded, SendenseError, TaskNotRunning
from sendense.common.time_split import JobTimeSplit
from sendense.hub.backup.disks import DiskResult, DiskSpec
from sendense.hub.backup.ledger import BackupLedger
from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, JobState
from sendense.hub.nodes.client import NodeClient, NodeConnector
from sendense.hub.nodes.vcenters import VcenterService
from sendense.hub.retention.policies import PolicyService
from sendense.hub.tasks.node_task import follow_node_task
from sendense.hub.tasks.runner import TaskRunner, split_log
from sendense.hub.tasks.task_log import TaskLogs

log = logging.getLogger(__name__)
# All running backups together poll at most 1 / POLL_SPREAD_S times a second.
POLL_SPREAD_S = 0.05
TELL_NODE_S = 10.0  # how long a cancel for the node is retried through its tunnel


class BackupRunner(TaskRunner[NodeJobStatus]):
    name = "backup"

    def __init__(
        self,
        db: Database,
        ledger: BackupLedger,
        vcenters: VcenterService,
        policies: PolicyService,
        nodes: NodeConnector,
        *,
        max_jobs: int = 4,
        per_node: int | None = None,
        per_repository: int | None = None,
        poll: float = 0.25,
        node_timeout: float = 60.0,
        logs: TaskLogs | None = None,
    ) -> None:
        limits = {"node": per_node or max_jobs, "repository": per_repository or max_jobs}
        super().__init__(db, max_jobs, logs=logs, limits=limits)
        self.ledger = ledger
        self.vcenters = vcenters
        self.policies = policies
        self.nodes = nodes
        self.poll = poll
        self.node_timeout = node_timeout

    def submit(
        self,
        vm_name: str,
        backup_type: str = "auto",
        vcenter: str | None = None,
        started_by: str | None = None,
        parent_id: str | None = None,
    ) -> str:
        # Refuse now, not in the queue, when there is none; the VM is known by its
        # name on that vCenter until the inventory gives its instance UUID.
        login, node_name = self.vcenters.login(vcenter)
        task_id = self.ledger.reserve(
            vm_name, backup_type, login.vcenter_host, started_by, parent_id
        )
        self.queue(
            task_id,
            lambda: self._run_backup(task_id, vm_name, backup_type, vcenter),
            self._claims(node_name),
        )
        log.info("backup queued task=%s vm=%s type=%s", task_id, vm_name, backup_type)
        return task_id

    def _claims(self, node_name: str) -> list[str]:
        """The node and the repository the backup will use: each has its limit of
        backups at once. No repository yet: the task fails when it runs."""
        claims = [f"node:{node_name}"]
        with contextlib.suppress(SendenseError):
            claims.append(f"repository:{self.ledger.repos.get(None, check_mounted=False).name}")
        return claims

    # The ledger owns a backup's states: reserve() queued it, prepare() runs it,
    # finish() completes it and fail() removes what it wrote.
    def start(self, task_id: str) -> bool:  # noqa: ARG002
        return True

    def fail(self, task_id: str, message: str) -> None:
        self.ledger.fail(task_id, message)

    def complete(self, task_id: str, note: str | None) -> None:
        pass  # finish() completed it

    def _run_backup(
        self, task_id: str, vm_name: str, backup_type: str, vcenter: str | None
    ) -> None:
        status = self._backup(task_id, vm_name, backup_type, vcenter)
        if status.state != "complete":
            raise NodeTaskEnded(status.state, status.error)
        for disk in status.disks:
            if disk.full_reason:
                log.warning(
                    "disk %d read as a full task=%s: %s", disk.disk_key, task_id, disk.full_reason
                )
        results = {
            d.disk_key: DiskResult(
                d.change_id,
                d.bytes_written,
                d.checksum,
                d.seconds,
                d.bytes_total / d.seconds if d.seconds else None,
                d.areas,
                d.checksum_block,
                d.full_reason,
            )
            for d in status.disks
        }
        split = JobTimeSplit.of({d.disk_key: d.time_split for d in status.disks})
        self.ledger.finish(task_id, results, split.model_dump(mode="json"))

    def _client(self, node: str) -> NodeClient:
        return self.nodes.open(node)

    def _backup(
        self, task_id: str, vm_name: str, backup_type: str, vcenter: str | None
    ) -> NodeJobStatus:
        login, node_name = self.vcenters.login(vcenter)
        client = self._client(node_name)
        try:
            inventory = client.inventory(login, vm_name)
            if inventory.uuid:
                # Deleted and re-created, or renamed: the job moves to its VM's row.
                self.ledger.identify(task_id, vm_name, login.vcenter_host, inventory.uuid)
            disks = [
                DiskSpec(
                    d.key,
                    d.capacity_bytes,
                    d.label,
                    d.datastore_path,
                    # unknown (an older node): the whole disk
                    d.capacity_bytes if d.allocated_bytes is None else d.allocated_bytes,
                )
                for d in inventory.disks
            ]
            folder = inventory.path.rsplit("/", 1)[0] if "/" in inventory.path else None
            policy = self.policies.policy_for(vm_name, folder)
            prepared = self.ledger.prepare(
                vm_name,
                disks,
                backup_type,
                job_id=task_id,
                layout=inventory.layout(),
                max_chain=policy.max_chain_length if policy else None,
                node=self.nodes.registry.get(node_name),
            )
            previous = self.ledger.parent_change_ids(prepared)
            request = BackupStartRequest(
                job_id=task_id,
                vm_name=vm_name,
                vm_uuid=inventory.uuid or None,
                vcenter_host=login.vcenter_host,
                vcenter_user=login.vcenter_user,
                vcenter_password=login.vcenter_password,
                vcenter_thumbprint=login.vcenter_thumbprint,
                nbd_targets=prepared.nbd_targets,
                backup_type="incremental" if previous else "full",
                previous_change_ids={str(k): v for k, v in previous.items()},
                space_budget_bytes=self.ledger.room(prepared),
            )
            client.start_backup(request)
            planned: set[int] = set()

            def record(status: NodeJobStatus) -> None:
                self.record_node(task_id, *split_log(status))
                # Once the node knows a disk's exact plan, the repository holds
                # that for it, not the hub's first bound (ledger.planned).
                known = {d.disk_key: d.bytes_total for d in status.disks if d.bytes_total}
                if known.keys() - planned:
                    self.ledger.planned(prepared, known)
                    planned.update(known)

            try:
                return follow_node_task(
                    lambda: client.job(task_id, self.node_lines.seen(task_id)),
                    client.name,
                    poll=self._poll_interval,
                    node_timeout=self.node_timeout,
                    record=record,
                    check=lambda: self._still_running(task_id),
                )
            except BaseException:
                self._tell_node(client, task_id)
                raise
        finally:
            client.close()

    def _poll_interval(self) -> float:
        """`poll`, longer while many backups run: each poll is a call through the
        tunnel and a database read, and 50 backups at 4 a second each would cost
        the hub and the node more than the backups' progress is worth."""
        return max(self.poll, POLL_SPREAD_S * self.admission.running_count)

    def _still_running(self, task_id: str) -> None:
        """Between polls: a task the hub failed meanwhile (an operator's `finish`
        with success false, a hub stopping) stops following."""
        with self.db.session() as s:
            job = s.get(Job, task_id)
            if job is None or job.state != JobState.RUNNING:
                state = job.state.value if job is not None else "gone"
                raise TaskNotRunning(task_id, f"the hub ended the backup (it is {state})")

    @staticmethod
    def _tell_node(client: NodeClient, task_id: str) -> None:
        """The hub fails the task: the node stops copying and removes its snapshot
        now, not when its next write to a closed export fails. Best effort: a node
        that cannot be reached has its snapshot hunter."""
        client.retry_s = min(client.retry_s, TELL_NODE_S)
        try:
            client.cancel(task_id)
            log.info("node told to cancel task=%s node=%s", task_id, client.name)
        except SendenseError as exc:
            log.warning("node not told task=%s node=%s: %s", task_id, client.name, exc.message)
