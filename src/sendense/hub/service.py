"""The hub assembled: settings -> database -> services. API and CLI only talk to this."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sendense.common.sshkeys import KeyPair
from sendense.hub.access import AccessService
from sendense.hub.backups import BackupExports
from sendense.hub.config import HubSettings
from sendense.hub.db.database import Database
from sendense.hub.exports import ExportManager, ExportSettings
from sendense.hub.local_nbd import stop_leftovers
from sendense.hub.nodes import NodeInfo, NodeService
from sendense.hub.ports import PortAllocator
from sendense.hub.prune import PruneService
from sendense.hub.queries import Queries
from sendense.hub.reconcile import ReconcileReport, reconcile
from sendense.hub.repository import RepositoryService
from sendense.hub.secrets import SecretBox
from sendense.hub.tokens import TokenService
from sendense.hub.tunnel.sshd import TunnelSshd, is_listening
from sendense.nbd.qemu_img import QemuImg

log = logging.getLogger(__name__)


@dataclass
class Hub:
    settings: HubSettings
    db: Database
    repos: RepositoryService
    ports: PortAllocator
    exports: ExportManager
    backups: BackupExports
    tokens: TokenService
    queries: Queries
    nodes: NodeService
    tunnel: TunnelSshd
    access: AccessService
    prune: PruneService

    @classmethod
    def open(cls, settings: HubSettings, migrate: bool = True) -> Hub:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = Database(settings.database_url)
        if migrate:
            db.migrate()
        repos = RepositoryService(db, QemuImg(settings.qemu_img), settings.min_free_bytes)
        ports = PortAllocator(db, settings.nbd_port_min, settings.nbd_port_max, settings.nbd_host)
        exports = ExportManager(
            db,
            ExportSettings(
                settings.nbd_host, settings.nbd_shared, settings.qemu_nbd, settings.log_dir
            ),
        )
        backups = BackupExports(
            db, repos, ports, exports, settings.targets_host, settings.nbd_cache
        )
        nodes = NodeService(
            db,
            SecretBox(settings.data_dir / "secret.key"),
            (settings.reverse_port_min, settings.reverse_port_max),
            settings.pairing_minutes,
        )
        permitted = [*range(settings.nbd_port_min, settings.nbd_port_max + 1), settings.listen_port]
        tunnel = TunnelSshd(
            settings.data_dir / "tunnel", (settings.tunnel_host, settings.tunnel_port), permitted
        )
        access = AccessService(
            db, repos, ports, exports, settings.scratch_dir, settings.targets_host
        )
        return cls(
            settings,
            db,
            repos,
            ports,
            exports,
            backups,
            TokenService(db),
            Queries(db),
            nodes,
            tunnel,
            access,
            PruneService(db, repos, access, settings.zone, settings.scratch_dir),
        )

    def start_tunnel(self) -> None:
        self.sync_tunnel_keys()
        self.tunnel.start()

    def sync_tunnel_keys(self) -> None:
        self.tunnel.write_authorized_keys(self.nodes.list(), self.nodes.public_keys())

    def tunnel_identity(self) -> KeyPair:
        return self.tunnel.identity

    def enroll_node(self, code: str, name: str, public_key: str, api_token: str) -> NodeInfo:
        info = self.nodes.enroll(code, name, public_key, api_token)
        self.sync_tunnel_keys()
        return info

    def revoke_node(self, name: str) -> NodeInfo:
        info = self.nodes.revoke(name)
        self.sync_tunnel_keys()
        if info.reverse_port is not None:
            self.tunnel.disconnect(info.reverse_port)
        return info

    def node_status(self) -> list[NodeInfo]:
        """Nodes, with `connected` probed now: a node is connected while its reverse
        forward listens on the hub."""
        for node in self.nodes.list():
            if node.reverse_port is not None:
                up = not node.revoked and is_listening("127.0.0.1", node.reverse_port)
                if up or node.connected:
                    self.nodes.set_connected(node.id, up)
        return self.nodes.list()

    def reconcile(self, reason: str = "the hub restarted during the job") -> ReconcileReport:
        stop_leftovers(self.settings.scratch_dir)
        report = reconcile(self.backups, reason)
        finished = self.prune.recover()  # a prune's merge steps roll forward
        if finished:
            log.warning("finished %d merge steps a stopped prune left", finished)
        return report

    def close(self) -> None:
        self.tunnel.stop()
        self.exports.stop_all()
        self.db.dispose()
