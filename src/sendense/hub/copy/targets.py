"""Copy targets: add (the bucket checked, its key made or proven), list, open,
remove, and the key's recovery text."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from sendense.common.errors import Conflict, InvalidInput, NotFound
from sendense.hub.auth.secrets import SecretBox
from sendense.hub.copy.bucket import LOCK_MODES, Bucket, BucketConfig, CopyTargetError
from sendense.hub.copy.sealing import CopyKey, SealBroken, open_bytes, seal_bytes
from sendense.hub.db.database import Database
from sendense.hub.db.models import CopyTarget
from sendense.hub.retention.rules import KeepRules

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# An object every target holds, sealed with its key: a key that does not open it
# is the wrong key for the bucket, said before anything is written or read.
KEY_CHECK = "key-check"
_KEY_CHECK_TEXT = b"sendense copy target key check"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    prefix: str = ""
    region: str = "us-east-1"
    path_style: bool = True
    ca_file: str | None = None
    lock_mode: str = "none"
    lock_days: int = 0
    limit_mb_s: float | None = None
    full_every: int = 7
    vm_pattern: str | None = None
    keep: KeepRules | None = None


@dataclass(frozen=True)
class TargetInfo:
    id: str
    name: str
    endpoint: str
    bucket: str
    prefix: str
    region: str
    path_style: bool
    lock_mode: str
    lock_days: int
    limit_mb_s: float | None
    full_every: int
    key_fingerprint: str
    created_at: datetime
    vm_pattern: str | None
    keep: dict[str, int] | None


@dataclass(frozen=True)
class OpenTarget:
    info: TargetInfo
    bucket: Bucket
    key: CopyKey


def _check(spec: TargetSpec) -> None:
    if not _NAME.match(spec.name):
        raise InvalidInput("a copy target's name: up to 64 letters, digits, '.', '_' and '-'")
    if not spec.endpoint.startswith(("http://", "https://")):
        raise InvalidInput("a copy target's endpoint is an http:// or https:// URL")
    if spec.lock_mode not in LOCK_MODES:
        raise InvalidInput(f"lock mode is one of {', '.join(LOCK_MODES)}")
    if spec.lock_mode != "none" and spec.lock_days < 1:
        raise InvalidInput("a locked target keeps its objects at least 1 day (--lock-days)")
    if spec.full_every < 1:
        raise InvalidInput("a synthetic full every N points: N is at least 1")
    if spec.limit_mb_s is not None and spec.limit_mb_s <= 0:
        raise InvalidInput("the bandwidth limit is a positive number of MB/s")


class CopyTargetService:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def add(self, spec: TargetSpec, key: CopyKey | None = None) -> tuple[TargetInfo, str | None]:
        """Adds a target once its bucket answers and, when it holds copies already,
        once `key` opens them. Returns the target and, for a new key, its recovery
        text (shown once: the hub keeps the key sealed, `key export` shows it again)."""
        _check(spec)
        bucket = Bucket(self._config(spec))
        bucket.check()
        made = key is None
        key = key or CopyKey.generate()
        self._prove_key(bucket, key, spec.name)
        try:
            with self.db.session() as s:
                row = CopyTarget(
                    name=spec.name,
                    endpoint=spec.endpoint,
                    bucket=spec.bucket,
                    prefix=spec.prefix.strip("/"),
                    region=spec.region,
                    path_style=spec.path_style,
                    ca_file=spec.ca_file,
                    access_key=spec.access_key,
                    secret_key_sealed=self.box.seal(spec.secret_key),
                    copy_key_sealed=self.box.seal(key.recovery_text()),
                    key_fingerprint=key.fingerprint,
                    lock_mode=spec.lock_mode,
                    lock_days=spec.lock_days,
                    limit_mb_s=spec.limit_mb_s,
                    full_every=spec.full_every,
                    vm_pattern=spec.vm_pattern,
                    keep=asdict(spec.keep) if spec.keep else None,
                )
                s.add(row)
                s.flush()
                info = self._info(row)
        except IntegrityError as exc:
            raise Conflict(f"a copy target named {spec.name!r} exists") from exc
        log.info(
            "copy target added name=%s bucket=%s lock=%s", spec.name, spec.bucket, spec.lock_mode
        )
        return info, key.recovery_text() if made else None

    def _prove_key(self, bucket: Bucket, key: CopyKey, name: str) -> None:
        if KEY_CHECK in bucket.names(KEY_CHECK):
            try:
                ok = open_bytes(key, KEY_CHECK, bucket.get(KEY_CHECK)) == _KEY_CHECK_TEXT
            except SealBroken:
                ok = False
            if not ok:
                raise InvalidInput(
                    f"the key given for copy target {name} does not open the copies in its "
                    "bucket: use the key those copies were made with (its recovery text)"
                )
            return
        bucket.put(KEY_CHECK, seal_bytes(key, KEY_CHECK, _KEY_CHECK_TEXT), bucket.retain_until())

    def list(self) -> list[TargetInfo]:
        with self.db.session() as s:
            return [self._info(r) for r in s.scalars(select(CopyTarget).order_by(CopyTarget.name))]

    def open(self, name: str) -> OpenTarget:
        with self.db.session() as s:
            row = s.scalars(select(CopyTarget).where(CopyTarget.name == name)).first()
            if row is None:
                raise NotFound(f"copy target {name!r} does not exist")
            info = self._info(row)
            spec = TargetSpec(
                name=row.name,
                endpoint=row.endpoint,
                bucket=row.bucket,
                access_key=row.access_key,
                secret_key=self.box.open(row.secret_key_sealed),
                prefix=row.prefix,
                region=row.region,
                path_style=row.path_style,
                ca_file=row.ca_file,
                lock_mode=row.lock_mode,
                lock_days=row.lock_days,
                limit_mb_s=row.limit_mb_s,
            )
            key = CopyKey.from_recovery_text(self.box.open(row.copy_key_sealed))
        return OpenTarget(info, self._bucket(info.id, self._config(spec)), key)

    def _bucket(self, target_id: str, config: BucketConfig) -> Bucket:
        """One client per target while its settings hold: making a boto3 client
        takes a good part of a second, and the target's bandwidth limit is shared
        by all its tasks."""
        with self._lock:
            known = self._buckets.get(target_id)
            if known is None or known.cfg != config:
                known = self._buckets[target_id] = Bucket(config)
            return known

    def set_policy(self, name: str, vm_pattern: str | None, keep: KeepRules | None) -> TargetInfo:
        """Which VMs' new verified points the target takes by itself (None: only
        those asked for), and its own keep-* rules (None: it keeps everything)."""
        with self.db.session() as s:
            row = s.scalars(select(CopyTarget).where(CopyTarget.name == name)).first()
            if row is None:
                raise NotFound(f"copy target {name!r} does not exist")
            row.vm_pattern = vm_pattern
            row.keep = asdict(keep) if keep and not keep.empty else None
            return self._info(row)

    def recovery_text(self, name: str) -> str:
        return self.open(name).key.recovery_text()

    def remove(self, name: str) -> None:
        """Forgets a target; its bucket keeps every object (locked ones cannot go)."""
        with self.db.session() as s:
            row = s.scalars(select(CopyTarget).where(CopyTarget.name == name)).first()
            if row is None:
                raise NotFound(f"copy target {name!r} does not exist")
            s.delete(row)
        log.info("copy target removed name=%s", name)

    @staticmethod
    def _config(spec: TargetSpec) -> BucketConfig:
        return BucketConfig(
            endpoint=spec.endpoint,
            bucket=spec.bucket,
            prefix=spec.prefix.strip("/"),
            region=spec.region,
            path_style=spec.path_style,
            ca_file=spec.ca_file,
            access_key=spec.access_key,
            secret_key=spec.secret_key,
            lock_mode=spec.lock_mode,
            lock_days=spec.lock_days,
            limit_mb_s=spec.limit_mb_s,
        )

    @staticmethod
    def _info(row: CopyTarget) -> TargetInfo:
        return TargetInfo(
            id=row.id,
            name=row.name,
            endpoint=row.endpoint,
            bucket=row.bucket,
            prefix=row.prefix,
            region=row.region,
            path_style=row.path_style,
            lock_mode=row.lock_mode,
            lock_days=row.lock_days,
            limit_mb_s=row.limit_mb_s,
            full_every=row.full_every,
            key_fingerprint=row.key_fingerprint,
            created_at=row.created_at,
            vm_pattern=row.vm_pattern,
            keep=dict(row.keep) if row.keep else None,
        )


__all__ = ["CopyTargetError", "CopyTargetService", "OpenTarget", "TargetInfo", "TargetSpec"]
