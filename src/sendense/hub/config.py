"""The hub's settings (TOML section `[hub]`, environment prefix `SENDENSE_HUB_`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

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
    # reaches through its tunnel (export_socket_dir).
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
    # The tunnel: nodes dial this; each node's API is reached back through a
    # reverse forward on a hub loopback port from this range (the seed's 9081).
    tunnel_host: str = "127.0.0.1"
    tunnel_port: int = Field(default=8022, ge=1, le=65535)
    reverse_port_min: int = Field(default=9081, ge=1, le=65535)
    reverse_port_max: int = Field(default=9180, ge=1, le=65535)
    pairing_minutes: int = Field(default=15, ge=1, le=1440)
    # Backups of different VMs at once; the rest wait in the queue.
    max_jobs: int = Field(default=4, ge=1, le=64)
    # A node silent this long fails its job; a call to a node is repeated this long.
    node_timeout_s: float = Field(default=60.0, gt=0)
    # Instant NBD access to a restore point closes after this long without a client.
    access_idle_s: float = Field(default=1800.0, gt=0)
    # Retention periods (a day, a week...) and schedules are in this time zone.
    time_zone: str = "UTC"
    # How often the hub looks for due schedules.
    schedule_tick_s: float = Field(default=30.0, gt=0)
    # How often connected nodes are handed their vCenters' logins to remove the
    # snapshots of backups that died with them (a restarted node has none).
    snapshot_sweep_s: float = Field(default=30.0, gt=0)
    log_level: str = "INFO"

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
    def api_cert(self) -> Path:
        return self.tls_cert or self.data_dir / "tls" / "hub.crt"

    @property
    def api_key(self) -> Path:
        return self.tls_key or self.data_dir / "tls" / "hub.key"

    @property
    def export_socket_dir(self) -> Path:
        """Sockets of the exports nodes write and read: a 0700 directory per node
        login user, reached through that node's tunnel only."""
        return self.data_dir / "nbd"

    @property
    def scratch_dir(self) -> Path:
        """Sockets of the hub's own read-only qemu-nbd servers (verification, exports)."""
        return self.data_dir / "scratch"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)
