"""The hub's settings (TOML section `[hub]`, environment prefix `SENDENSE_HUB_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from sendense.common.config import SendenseSettings, default_data_dir


class HubSettings(SendenseSettings):
    toml_section: ClassVar[str] = "hub"
    model_config = SettingsConfigDict(env_prefix="SENDENSE_HUB_", extra="forbid")

    data_dir: Path = Field(default_factory=lambda: default_data_dir("hub"))
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8082, ge=1, le=65535)
    # The API speaks TLS: with the operator's certificate and key, or with a
    # self-signed pair the hub makes at first start in data_dir/tls (pinned by
    # its SHA-256). `tls = false` (plain HTTP) is refused unless the listen
    # address is loopback, and then the Host header must name that address.
    tls: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    database_url: str = ""
    # Exports for people (instant access) listen here; the targets string of a
    # node's export names it too, though that export is a Unix socket the node
    # reaches through its tunnel (nodes/tunnel_sshd.py, export_socket_root).
    nbd_host: str = "127.0.0.1"
    # The NBD address as the node sees it, in the targets string: its end of the
    # tunnel (127.0.0.1 on its own machine; 127.0.0.2 when both share one).
    targets_host: str = ""
    nbd_port_min: int = Field(default=10100, ge=1, le=65535)
    nbd_port_max: int = Field(default=10200, ge=1, le=65535)
    nbd_shared: int = Field(default=10, ge=2)
    # `none` is fastest (O_DIRECT); `auto` falls back to writeback where the
    # repository's filesystem refuses O_DIRECT (tmpfs).
    nbd_cache: Literal["auto", "none", "writeback"] = "auto"
    qemu_nbd: str = "qemu-nbd"
    qemu_img: str = "qemu-img"
    min_free_bytes: int = Field(default=1 << 30, ge=0)
    # A repository must be a directory at or under one of these (after symlinks
    # and `..` are resolved): an API caller never makes the hub write images
    # anywhere else. A TOML list; in the environment, paths separated by ':'.
    repository_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [default_data_dir("repositories")]
    )
    # The tunnel: nodes dial this; each node's API is reached back through a
    # reverse forward on a hub loopback port from this range (the seed's 9081).
    tunnel_host: str = "127.0.0.1"
    tunnel_port: int = Field(default=8022, ge=1, le=65535)
    # Each node logs in as its own system user (sendense-n-<id>), in this group.
    tunnel_group: str = Field(default="sendense-nodes", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    reverse_port_min: int = Field(default=9081, ge=1, le=65535)
    reverse_port_max: int = Field(default=9180, ge=1, le=65535)
    pairing_minutes: int = Field(default=15, ge=1, le=1440)
    # Backups of different VMs at once; the rest wait in the queue, in the order
    # they came. Of those, at most so many on one node (keep it at most the
    # node's own max_jobs, which refuses more) and into one repository.
    max_jobs: int = Field(default=4, ge=1, le=128)
    max_jobs_per_node: int = Field(default=4, ge=1, le=128)
    max_jobs_per_repository: int = Field(default=8, ge=1, le=128)
    # Finished tasks' rows and logs older than this are removed (housekeeping).
    task_retention_days: int = Field(default=60, ge=1)
    # A node silent this long fails its job; a call to a node is repeated this long.
    node_timeout_s: float = Field(default=60.0, gt=0)
    # Instant NBD access to a restore point closes after this long without a client.
    access_idle_s: float = Field(default=1800.0, gt=0)
    # File-level restore: restore points browsed at once (one appliance, a small
    # VM, each), closed after this long unused; a call to an appliance that makes
    # no progress this long stops it (a damaged filesystem never hangs the hub).
    file_restore_appliances: int = Field(default=2, ge=1, le=32)
    file_restore_idle_s: float = Field(default=600.0, gt=0)
    file_restore_call_timeout_s: float = Field(default=120.0, gt=0)
    file_restore_memory_mb: int = Field(default=768, ge=256, le=65536)
    # Emulate the appliance's CPU (TCG): for machines where /dev/kvm is missing or
    # unusable. Off where KVM works: launches take a few seconds instead of 10-30.
    file_restore_force_tcg: bool = True
    # Retention periods (a day, a week...) and schedules are in this time zone.
    time_zone: str = "UTC"
    # How often the hub looks for due schedules.
    schedule_tick_s: float = Field(default=30.0, gt=0)
    # Offsite copies: how often targets with a VM pattern take new verified points
    # and the hub's configuration; their retention runs at most hourly.
    copy_tick_s: float = Field(default=60.0, gt=0)
    copy_prune_every_s: float = Field(default=3600.0, gt=0)
    # Every object of a target is read back and checked this often (a task).
    copy_verify_every_s: float = Field(default=7 * 86400.0, gt=0)
    # How often connected nodes are handed their vCenters' logins to remove the
    # snapshots of backups that died with them (a restarted node has none).
    snapshot_sweep_s: float = Field(default=30.0, gt=0)
    # A login's session (its token) lasts this long.
    session_lifetime_s: float = Field(default=12 * 3600.0, ge=60, le=30 * 86400)
    # ...and ends sooner when unused this long (the console's idle logout).
    session_idle_s: float = Field(default=1800.0, ge=120, le=30 * 86400)
    # Failed logins tolerated per user name and per client address within
    # login_window_s; more are answered 429 until the oldest leaves the window.
    login_failures_per_user: int = Field(default=5, ge=1)
    login_failures_per_address: int = Field(default=20, ge=1)
    login_window_s: float = Field(default=300.0, gt=0)
    # Notifications: how often the notifier looks for events; a target gets at
    # most notify_storm_threshold single messages per notify_storm_window_s (more
    # go as one digest); the daily report's time (HH:MM in time_zone); the first
    # wait before a failed webhook is tried again (then doubled).
    notify_tick_s: float = Field(default=30.0, gt=0)
    notify_storm_threshold: int = Field(default=10, ge=1)
    notify_storm_window_s: float = Field(default=60.0, gt=0)
    daily_report_time: str = Field(default="07:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    notify_webhook_backoff_s: float = Field(default=1.0, ge=0)
    log_level: str = "INFO"

    @field_validator("repository_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in value.split(":") if part]
        return value

    @field_validator("repository_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        if not roots:
            raise ValueError("name at least one directory")
        for root in roots:
            if not root.is_absolute():
                raise ValueError(f"{root} is not an absolute path")
        return roots

    @model_validator(mode="after")
    def _check(self) -> HubSettings:
        if self.nbd_port_min > self.nbd_port_max:
            raise ValueError("nbd_port_min must not exceed nbd_port_max")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if not self.targets_host:
            self.targets_host = self.nbd_host
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.time_zone!r}") from None
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'hub.db'}"
        return self

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def task_log_dir(self) -> Path:
        """One log file per task (hub/tasks/task_log.py)."""
        return self.data_dir / "task-logs"

    @property
    def api_cert(self) -> Path:
        return self.tls_cert or self.data_dir / "tls" / "hub.crt"

    @property
    def api_key(self) -> Path:
        return self.tls_key or self.data_dir / "tls" / "hub.key"

    @property
    def scratch_dir(self) -> Path:
        """Sockets of the hub's own read-only qemu-nbd servers (verification, exports)."""
        return self.data_dir / "scratch"

    @property
    def file_restore_dir(self) -> Path:
        """File-restore appliances' working directories (their throwaway overlays)."""
        return self.scratch_dir / "browse"

    @property
    def access_keys_dir(self) -> Path:
        """The pre-shared keys of open instant accesses, one 0700 directory each."""
        return self.data_dir / "access-keys"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)
