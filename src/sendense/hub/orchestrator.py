"""The hub's main job: one backup of one VM, DESIGN.md steps 1-8.

submit() reserves the VM (a second request gets 409 at once) and queues the job;
a worker (at most `max_jobs` at a time) asks the node for the VM's disks, opens
the exports, starts the node's copy, follows its progress, and finishes (check,
one transaction) or fails (everything removed) the job. A node that stops
answering for `node_timeout` seconds fails the job with that reason.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sendense.common.contract import BackupStartRequest, NodeJobStatus
from sendense.common.errors import SendenseError
from sendense.hub.backups import DiskResult, DiskSpec
from sendense.hub.follow import follow
from sendense.hub.node_client import NodeClient
from sendense.hub.policies import PolicyService
from sendense.hub.service import Hub
from sendense.hub.vcenters import VcenterService

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(
        self, hub: Hub, max_jobs: int = 4, poll: float = 0.25, node_timeout: float = 60.0
    ) -> None:
        self.hub = hub
        self.vcenters = VcenterService(hub.db, hub.nodes.box)
        self.policies = PolicyService(hub.db)
        self.poll = poll
        self.node_timeout = node_timeout
        self._pool = ThreadPoolExecutor(max_jobs, thread_name_prefix="backup-job")
        self._progress: dict[str, NodeJobStatus] = {}
        self._lock = threading.Lock()

    def submit(self, vm_name: str, backup_type: str = "auto", vcenter: str | None = None) -> str:
        self.vcenters.login(vcenter)  # refuse now, not in the queue, when there is none
        job_id = self.hub.backups.reserve(vm_name, backup_type)
        self._pool.submit(self._run, job_id, vm_name, backup_type, vcenter)
        log.info("backup queued job=%s vm=%s type=%s", job_id, vm_name, backup_type)
        return job_id

    def progress(self, job_id: str) -> NodeJobStatus | None:
        with self._lock:
            return self._progress.get(job_id)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job_id: str, vm_name: str, backup_type: str, vcenter: str | None) -> None:
        try:
            self._backup(job_id, vm_name, backup_type, vcenter)
        except SendenseError as exc:
            self.hub.backups.fail(job_id, exc.message)
        except Exception as exc:
            log.exception("backup job crashed job=%s", job_id)
            self.hub.backups.fail(job_id, f"internal error: {type(exc).__name__}: {exc}")

    def _backup(self, job_id: str, vm_name: str, backup_type: str, vcenter: str | None) -> None:
        login, node_name = self.vcenters.login(vcenter)
        client = NodeClient(self.hub.nodes, node_name, owns_listener=self.hub.tunnel.owns_listener)
        try:
            inventory = client.inventory(login, vm_name)
            disks = [
                DiskSpec(d.key, d.capacity_bytes, d.label, d.datastore_path)
                for d in inventory.disks
            ]
            folder = inventory.path.rsplit("/", 1)[0] if "/" in inventory.path else None
            policy = self.policies.policy_for(vm_name, folder)
            prepared = self.hub.backups.prepare(
                vm_name, disks, backup_type, job_id=job_id, layout=inventory.layout(),
                max_chain=policy.max_chain_length if policy else None,
            )  # fmt: skip
            previous = self.hub.backups.parent_change_ids(prepared)
            request = BackupStartRequest(
                job_id=job_id, vm_name=vm_name, vcenter_host=login.vcenter_host,
                vcenter_user=login.vcenter_user, vcenter_password=login.vcenter_password,
                vcenter_thumbprint=login.vcenter_thumbprint, nbd_targets=prepared.nbd_targets,
                backup_type="incremental" if previous else "full",
                previous_change_ids={str(k): v for k, v in previous.items()},
            )  # fmt: skip
            client.start_backup(request)
            status = self._follow(client, job_id)
        finally:
            client.close()
        if status.state != "complete":
            raise SendenseError(f"node reported the job {status.state}: {status.error}")
        for disk in status.disks:
            if disk.full_reason:
                log.warning("disk %d read as a full job=%s: %s", disk.disk_key, job_id,
                            disk.full_reason)  # fmt: skip
        results = {
            d.disk_key: DiskResult(
                d.change_id, d.bytes_written, d.checksum, d.seconds,
                d.bytes_total / d.seconds if d.seconds else None, d.areas, d.checksum_block,
            )
            for d in status.disks
        }  # fmt: skip
        self.hub.backups.finish(job_id, results)

    def _follow(self, client: NodeClient, job_id: str) -> NodeJobStatus:
        def record(status: NodeJobStatus) -> None:
            with self._lock:
                self._progress[job_id] = status

        return follow(lambda: client.job(job_id), client.name, poll=self.poll,
                      node_timeout=self.node_timeout, record=record)  # fmt: skip
