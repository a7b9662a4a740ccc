"""The hub assembled: settings -> database -> services. API and CLI only talk to this."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sendense.hub.backups import BackupExports
from sendense.hub.config import HubSettings
from sendense.hub.db.database import Database
from sendense.hub.exports import ExportManager, ExportSettings
from sendense.hub.ports import PortAllocator
from sendense.hub.queries import Queries
from sendense.hub.reconcile import ReconcileReport, reconcile
from sendense.hub.repository import RepositoryService
from sendense.hub.tokens import TokenService
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
        backups = BackupExports(db, repos, ports, exports, settings.nbd_host, settings.nbd_cache)
        return cls(settings, db, repos, ports, exports, backups, TokenService(db), Queries(db))

    def reconcile(self, reason: str = "the hub restarted during the job") -> ReconcileReport:
        return reconcile(self.backups, reason)

    def close(self) -> None:
        self.exports.stop_all()
        self.db.dispose()
