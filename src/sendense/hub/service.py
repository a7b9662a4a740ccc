"""The hub assembled: settings -> database -> services -> task runners. This is
the one place that builds the hub; the API and the CLI only talk to a `Hub`."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path

from sendense.common.errors import InvalidInput
from sendense.common.files import private_dir
from sendense.common.sshkeys import KeyPair
from sendense.common.tls import cert_file_fingerprint
from sendense.hub.auth.audit_log import AuditLog
from sendense.hub.auth.secrets import SecretBox
from sendense.hub.auth.tokens import TokenService
from sendense.hub.auth.users import UserService
from sendense.hub.backup.ledger import BackupLedger
from sendense.hub.backup.reconcile import ReconcileReport, reconcile
from sendense.hub.backup.runner import BackupRunner
from sendense.hub.backup.scheduler import Scheduler
from sendense.hub.config import HubSettings
from sendense.hub.copy.runner import CopyRunner, CopySettings
from sendense.hub.copy.targets import CopyTargetService
from sendense.hub.db.database import Database
from sendense.hub.files.appliance import ApplianceSettings
from sendense.hub.files.sessions import BrowseSettings, FileRestoreService
from sendense.hub.nodes.accounts import NodeAccounts, node_user_name
from sendense.hub.nodes.client import NodeConnector
from sendense.hub.nodes.registry import NodeInfo, NodeService, Pairing, enroll_command
from sendense.hub.nodes.snapshot_sweep import SnapshotSweep
from sendense.hub.nodes.tunnel_sshd import TunnelSshd, export_socket_root, is_listening
from sendense.hub.nodes.vcenters import VcenterService
from sendense.hub.notify.notifier import Notifier, NotifierSettings, Sources
from sendense.hub.notify.targets import NotificationService
from sendense.hub.repository.exports import ExportManager, ExportSettings
from sendense.hub.repository.image_reader import stop_leftovers
from sendense.hub.repository.ports import PortAllocator
from sendense.hub.repository.repositories import RepositoryService
from sendense.hub.repository.usage_history import KEEP_DAYS, UsageHistory
from sendense.hub.restore.conversion import DiskConverter
from sendense.hub.restore.instant_access import AccessService
from sendense.hub.restore.to_vcenter import VmRestoreRunner
from sendense.hub.retention.policies import PolicyService
from sendense.hub.retention.prune import PruneService
from sendense.hub.tasks.catalog import TaskCatalog
from sendense.hub.tasks.housekeeping import HousekeepingReport, remove_old_tasks
from sendense.hub.tasks.task_ends import active_tasks, log_end
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.task_log_handler import install as install_task_log_handler
from sendense.hub.tasks.task_log_handler import write_line
from sendense.hub.verify.audit import RepositoryAudit
from sendense.hub.verify.runner import VerifyRunner
from sendense.hub.verify.verifier import Verifier
from sendense.nbd.qemu_img import QemuImg

log = logging.getLogger(__name__)


def hub_identity(data_dir: Path) -> str:
    """This hub's id, made at its first start and kept in its data directory: the
    owner of its tasks in a database that other hubs may share."""
    path = data_dir / "hub-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        identity = uuid.uuid4().hex
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(identity + "\n")
        return identity


@dataclass
class Hub:
    settings: HubSettings
    db: Database
    repos: RepositoryService
    ports: PortAllocator
    exports: ExportManager
    ledger: BackupLedger
    tokens: TokenService
    users: UserService
    audit_log: AuditLog
    nodes: NodeService
    vcenters: VcenterService
    tunnel: TunnelSshd
    accounts: NodeAccounts
    connector: NodeConnector
    access: AccessService
    converter: DiskConverter
    policies: PolicyService
    prune: PruneService
    verifier: Verifier
    audit: RepositoryAudit
    backups: BackupRunner
    restores: VmRestoreRunner
    verifications: VerifyRunner
    scheduler: Scheduler
    snapshot_sweep: SnapshotSweep
    notifications: NotificationService
    notifier: Notifier
    task_logs: TaskLogs
    tasks: TaskCatalog
    usage_history: UsageHistory
    files: FileRestoreService
    copy_targets: CopyTargetService
    copies: CopyRunner
    box: SecretBox  # secret.key: sealed secrets, keyed digests (auth/attempts.py)

    @classmethod
    def open(cls, settings: HubSettings, migrate: bool = True) -> Hub:
        private_dir(settings.data_dir)
        db = Database(settings.database_url, owner=hub_identity(settings.data_dir))
        hub_id = db.owner or "hub"
        socket_root = export_socket_root(hub_id, settings.data_dir)
        if migrate:
            db.migrate()
        repos = RepositoryService(
            db, QemuImg(settings.qemu_img), settings.min_free_bytes, settings.repository_roots
        )
        ports = PortAllocator(db, settings.nbd_port_min, settings.nbd_port_max, settings.nbd_host)
        exports = ExportManager(
            db,
            ExportSettings(
                settings.nbd_host,
                settings.nbd_shared,
                settings.qemu_nbd,
                settings.log_dir,
                socket_root,
            ),
        )
        ledger = BackupLedger(db, repos, ports, exports, settings.targets_host, settings.nbd_cache)
        box = SecretBox(settings.data_dir / "secret.key")
        nodes = NodeService(
            db,
            box,
            (settings.reverse_port_min, settings.reverse_port_max),
            settings.pairing_minutes,
        )
        vcenters = VcenterService(db, box)
        tokens = TokenService(db, timedelta(seconds=settings.session_idle_s))
        users = UserService(db, box, tokens, timedelta(seconds=settings.session_lifetime_s))
        # NBD goes through each node's relay to its sockets: the only port it opens is the API.
        tunnel = TunnelSshd(
            settings.data_dir / "tunnel",
            (settings.tunnel_host, settings.tunnel_port),
            [settings.listen_port],
            settings.tunnel_group,
            hub_id,
            socket_root,
        )
        connector = NodeConnector(
            nodes,
            tunnel.owns_listener,
            retry_s=settings.node_timeout_s,
            owns_connection=tunnel.owns_connection,
        )
        access = AccessService(
            db,
            repos,
            ports,
            exports,
            settings.scratch_dir,
            settings.targets_host,
            settings.access_keys_dir,
        )
        policies = PolicyService(db)
        task_logs = TaskLogs(settings.task_log_dir)
        install_task_log_handler()
        prune = PruneService(db, repos, access, settings.zone, settings.scratch_dir, logs=task_logs)
        verifier = Verifier(db, repos, settings.scratch_dir)
        node_timeout = settings.node_timeout_s
        backups = BackupRunner(
            db,
            ledger,
            vcenters,
            policies,
            connector,
            max_jobs=settings.max_jobs,
            per_node=settings.max_jobs_per_node,
            per_repository=settings.max_jobs_per_repository,
            node_timeout=node_timeout,
            logs=task_logs,
        )
        scheduler = Scheduler(
            backups,
            policies,
            prune,
            connector,
            node_status=lambda: nodes.refresh_connected(is_listening),
            zone=settings.zone,
            node_timeout=node_timeout,
        )
        notifications = NotificationService(db, box, settings.notify_webhook_backoff_s)
        notifier = Notifier(
            db,
            notifications,
            Sources(repos.list, lambda: nodes.refresh_connected(is_listening), policies.policy_for),
            settings.zone,
            NotifierSettings(
                settings.notify_storm_threshold,
                settings.notify_storm_window_s,
                time.fromisoformat(settings.daily_report_time),
            ),
            warn_task=lambda task_id, text: write_line(task_logs, task_id, "WARNING", text),
        )
        tasks = TaskCatalog(db)
        files = FileRestoreService(
            db,
            repos,
            tasks,
            task_logs,
            BrowseSettings(
                settings.file_restore_dir,
                settings.file_restore_appliances,
                settings.file_restore_idle_s,
                ApplianceSettings(
                    force_tcg=settings.file_restore_force_tcg,
                    memory_mb=settings.file_restore_memory_mb,
                    call_timeout=settings.file_restore_call_timeout_s,
                ),
            ),
        )
        copy_targets = CopyTargetService(db, box)
        return cls(
            settings=settings,
            db=db,
            repos=repos,
            ports=ports,
            exports=exports,
            ledger=ledger,
            tokens=tokens,
            users=users,
            audit_log=AuditLog(db),
            nodes=nodes,
            vcenters=vcenters,
            tunnel=tunnel,
            accounts=NodeAccounts(db, settings.tunnel_group),
            connector=connector,
            access=access,
            converter=DiskConverter(
                db, repos, settings.scratch_dir, reserve_bytes=settings.min_free_bytes
            ),
            policies=policies,
            prune=prune,
            verifier=verifier,
            audit=RepositoryAudit(db, repos),
            backups=backups,
            restores=VmRestoreRunner(
                db, access, vcenters, connector, node_timeout=node_timeout, logs=task_logs
            ),
            verifications=VerifyRunner(db, verifier, task_logs),
            scheduler=scheduler,
            snapshot_sweep=SnapshotSweep(
                vcenters, connector, lambda: nodes.refresh_connected(is_listening)
            ),
            notifications=notifications,
            notifier=notifier,
            task_logs=task_logs,
            tasks=tasks,
            usage_history=UsageHistory(db),
            files=files,
            copy_targets=copy_targets,
            copies=CopyRunner(
                db,
                copy_targets,
                repos,
                QemuImg(settings.qemu_img),
                CopySettings(
                    settings.scratch_dir,
                    settings.zone,
                    settings.copy_prune_every_s,
                    settings.copy_verify_every_s,
                ),
                task_logs,
            ),
            box=box,
        )

    def start_tunnel(self) -> None:
        self.sync_tunnel_keys()
        self.tunnel.start()

    def sync_tunnel_keys(self) -> None:
        """Make the system users of the nodes that may log in, write each one's keys
        file, and end the sessions and remove the users of nodes revoked or gone
        (only users this hub made). At start, after enrolling and revoking."""
        nodes = [n for n in self.nodes.list() if not n.revoked and n.system_user]
        keys = self.nodes.public_keys()
        active = {n.system_user: n.id for n in nodes if n.system_user and n.id in keys}
        uids = self.accounts.reconcile(active, self._end_sessions)
        self.tunnel.write_keys(
            {
                n.system_user: (
                    uids[n.system_user],
                    self.tunnel.key_line(keys[n.id], n.reverse_port, n.name, n.system_user),
                )
                for n in nodes
                if n.system_user in uids and n.reverse_port is not None
            }
        )

    def _end_sessions(self, user: str, uid: int) -> None:
        """Before a node user is removed: its key logs in no more, its sessions end."""
        self.tunnel.remove_keys(user)
        self.tunnel.disconnect(uid)
        # Its export sockets' directory: a later user may get its uid.
        shutil.rmtree(self.exports.socket_dir_of(user), ignore_errors=True)

    def tunnel_identity(self) -> KeyPair:
        return self.tunnel.identity

    def enroll_node(
        self, code: str, name: str, public_key: str, signature: str | None, api_token: str
    ) -> NodeInfo:
        """The node's system user is made (and recorded) before its row: a crash
        between the two leaves a user of no node, which the next start removes."""
        self.accounts.require_root()
        cert = self.api_cert_sha256()
        node_id = self.nodes.check_enrollment(code, name, public_key, signature, cert)
        user = node_user_name(node_id)
        self.accounts.ensure(node_id, user)
        try:
            info = self.nodes.enroll(code, name, public_key, signature, api_token, cert, node_id)
        except BaseException:
            self.accounts.remove(user)
            raise
        self.sync_tunnel_keys()
        return self.nodes.get(info.id)

    def pair(self, api_address: str) -> Pairing:
        """A single-use pairing code, and the `sendense node enroll` line the operator
        runs on the node with it (`api_address`: the hub's API, HOST:PORT, as the
        node reaches it): what `sendense hub pair` prints and the API answers."""
        code, expires = self.nodes.pairing_code()
        command = enroll_command(
            api_address, self.tunnel_identity().fingerprint, self.api_cert_sha256()
        )
        return Pairing(code, expires, command)

    def api_cert_sha256(self) -> str | None:
        """The SHA-256 of the certificate the API serves (what a node pinned)."""
        if not self.settings.tls or not self.settings.api_cert.exists():
            return None
        return cert_file_fingerprint(self.settings.api_cert)

    def revoke_node(self, name: str) -> NodeInfo:
        """Its keys file goes, its sessions end, its system user is removed."""
        info = self.nodes.revoke(name)
        self.sync_tunnel_keys()
        return info

    def job_node(self, vcenter: str | None) -> NodeInfo | None:
        """The node that writes a job made with `POST /api/v1/jobs` (its exports are
        that node's): the node of the vCenter registered as `vcenter`, else the only
        enrolled node; None when no node is enrolled."""
        if vcenter:
            for registered in self.vcenters.list():
                if registered.host == vcenter:
                    return self.nodes.get(registered.node)
        enrolled = [n for n in self.nodes.list() if not n.revoked]
        if len(enrolled) > 1:
            raise InvalidInput(
                "several nodes are enrolled: give the job's `vcenter`, registered with its node"
            )
        return enrolled[0] if enrolled else None

    def node_status(self) -> list[NodeInfo]:
        """Nodes, with `connected` probed now."""
        return self.nodes.refresh_connected(is_listening)

    def reconcile(self, reason: str = "the hub restarted during the job") -> ReconcileReport:
        self.files.stop_leftovers()  # before the scratch space, their overlays' home, is emptied
        stop_leftovers(self.settings.scratch_dir)
        ending = active_tasks(self.db)
        report = reconcile(self.ledger, reason)
        for task_id in ending:  # their logs say how they ended
            log_end(self.db, self.task_logs, task_id)
        self.access.remove_stale_keys()  # reconcile closed the accesses a restart ended
        finished = self.prune.recover()  # a prune's merge steps roll forward
        if finished:
            log.warning("finished %d merge steps a stopped prune left", finished)
        for repo in self.repos.outside_roots():
            log.warning(
                "repository %s at %s is outside the repository roots (%s): it keeps "
                "working, but could not be added today; move it under a root or add one",
                repo.name,
                repo.path,
                ", ".join(str(r) for r in self.repos.roots),
            )
        return report

    def housekeeping(self) -> HousekeepingReport:
        """Tasks and their logs older than `task_retention_days` go (at start-up,
        then hourly), finished tasks' progress leaves memory, and each mounted
        repository's usage is sampled (once a day)."""
        self.evict_progress()
        sampled = self.sample_usage()
        report = remove_old_tasks(self.db, self.task_logs, self.settings.task_retention_days)
        return replace(report, usage_samples=sampled)

    def today(self) -> date:
        """Today in the hub's time zone (`time_zone`)."""
        return datetime.now(self.settings.zone).date()

    def sample_usage(self) -> int:
        """Today's usage sample of each mounted repository (one that is not, or
        whose directory is gone, is skipped); samples past two years go."""
        today = self.today()
        written = self.usage_history.sample(self.repos.mounted(), today)
        self.usage_history.forget_before(today - timedelta(days=KEEP_DAYS))
        return written

    def evict_progress(self) -> None:
        """Finished tasks' progress kept past its time goes (every minute)."""
        for runner in (self.backups, self.restores, self.verifications, self.copies):
            runner.board.evict()

    def stop_tasks(self) -> None:
        """No new task starts; those running are ended by `reconcile` after this."""
        for runner in (self.backups, self.restores, self.verifications, self.copies):
            runner.shutdown()

    def close(self) -> None:
        self.stop_tasks()
        self.files.close_all()
        self.exports.stop_all()
        self.tunnel.stop()  # its runtime directory goes, the exports' sockets with it
        self.db.dispose()
