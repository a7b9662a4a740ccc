"""One copy target's bucket through boto3: checks, small objects, resumable
multipart uploads at a bandwidth limit, versioned reads. Every failure becomes a
CopyTargetError that says what to fix, never with a credential in it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from mypy_boto3_s3.client import S3Client
from mypy_boto3_s3.type_defs import ObjectLockRetentionTypeDef

from sendense.common.errors import SendenseError
from sendense.common.pacing import RateSlots
from sendense.hub.db.models import utcnow

log = logging.getLogger(__name__)
LOCK_MODES = ("none", "governance", "compliance")


class CopyTargetError(SendenseError):
    """The bucket could not be reached, or failed: the message says how."""

    http_status = 503
    exit_code = 9
    code = "copy_target_unavailable"


class CopyTargetRefused(CopyTargetError):
    """The bucket refused what the target's settings ask (credentials, a bucket
    that does not exist, no object lock): the settings are to be fixed."""

    http_status = 422
    exit_code = 2
    code = "copy_target_refused"


@dataclass(frozen=True)
class BucketConfig:
    endpoint: str
    bucket: str
    prefix: str
    region: str
    path_style: bool
    ca_file: str | None
    access_key: str
    secret_key: str
    lock_mode: str = "none"
    lock_days: int = 0
    limit_mb_s: float | None = None

    def key(self, name: str) -> str:
        return f"{self.prefix.strip('/')}/{name}" if self.prefix.strip("/") else name


class Throttle(RateSlots):
    """Bytes per second over the whole target (all parallel parts together)."""

    def take(self, size: int) -> None:
        wait = self.reserve(size)
        if wait > 0:
            time.sleep(wait)


def describe(exc: Exception, what: str, cfg: BucketConfig) -> CopyTargetError:
    where = f"{cfg.endpoint} bucket {cfg.bucket}"
    if isinstance(exc, EndpointConnectionError):
        return CopyTargetError(f"{what}: {cfg.endpoint} cannot be reached (is it up?)")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403"):
            return CopyTargetRefused(f"{what}: {where} refused the credentials ({code})")
        if code in ("NoSuchBucket", "404") and "Key" not in error:
            return CopyTargetRefused(f"{what}: {where} does not exist")
        return CopyTargetError(f"{what}: {where} answered {code}: {error.get('Message', '')}")
    return CopyTargetError(f"{what}: {where}: {type(exc).__name__}: {exc}")


class Bucket:
    def __init__(self, cfg: BucketConfig) -> None:
        self.cfg = cfg
        self.throttle = Throttle(cfg.limit_mb_s)
        config = Config(
            s3={"addressing_style": "path" if cfg.path_style else "virtual"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=16,
            # Checksums only when the operation requires them (SeaweedFS, MinIO and
            # older Ceph do not all accept the newer default trailers).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.s3: S3Client = boto3.client(
            "s3",
            endpoint_url=cfg.endpoint,
            region_name=cfg.region,
            aws_access_key_id=cfg.access_key,
            aws_secret_access_key=cfg.secret_key,
            verify=cfg.ca_file if cfg.ca_file else True,
            config=config,
        )

    def _call(self, what: str, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            raise describe(exc, what, self.cfg) from None

    def check(self) -> None:
        """Reachable, credentials accepted, versioned and locked as configured."""
        self._call("checking the bucket", lambda: self.s3.head_bucket(Bucket=self.cfg.bucket))
        if self.cfg.lock_mode == "none":
            return
        try:
            lock = self.s3.get_object_lock_configuration(Bucket=self.cfg.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if "ObjectLock" in code or code == "404":
                raise CopyTargetRefused(
                    f"bucket {self.cfg.bucket} has no object lock, and the target asks for "
                    f"{self.cfg.lock_mode} mode: create the bucket with object lock enabled, "
                    "or add the target with --lock none"
                ) from None
            raise describe(exc, "reading the bucket's object lock", self.cfg) from None
        except BotoCoreError as exc:
            raise describe(exc, "reading the bucket's object lock", self.cfg) from None
        if lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise CopyTargetRefused(f"bucket {self.cfg.bucket} has object lock switched off")

    def retain_until(self, days: int | None = None) -> datetime | None:
        if self.cfg.lock_mode == "none":
            return None
        return utcnow() + timedelta(days=days if days is not None else self.cfg.lock_days)

    def _lock_args(self, until: datetime | None) -> dict[str, object]:
        if until is None:
            return {}
        return {"ObjectLockMode": self.cfg.lock_mode.upper(), "ObjectLockRetainUntilDate": until}

    def put(self, name: str, body: bytes, until: datetime | None = None) -> str:
        """A small object in one request; its version id ("" on an unversioned bucket)."""
        self.throttle.take(len(body))
        key = self.cfg.key(name)
        answer = self._call(
            f"uploading {name}",
            lambda: self.s3.put_object(
                Bucket=self.cfg.bucket,
                Key=key,
                Body=body,
                **self._lock_args(until),  # type: ignore[arg-type]
            ),
        )
        return str(answer.get("VersionId", "")) if isinstance(answer, dict) else ""

    def get(self, name: str, version_id: str | None = None) -> bytes:
        return b"".join(self.read(name, version_id))

    def read(self, name: str, version_id: str | None = None) -> Iterator[bytes]:
        key = self.cfg.key(name)

        def get() -> object:
            if version_id:
                return self.s3.get_object(Bucket=self.cfg.bucket, Key=key, VersionId=version_id)
            return self.s3.get_object(Bucket=self.cfg.bucket, Key=key)

        answer = self._call(f"downloading {name}", get)
        assert isinstance(answer, dict)
        body = answer["Body"]
        try:
            while chunk := body.read(1 << 20):
                self.throttle.take(len(chunk))
                yield chunk
        except (ClientError, BotoCoreError) as exc:
            raise describe(exc, f"downloading {name}", self.cfg) from None
        finally:
            body.close()

    def size(self, name: str, version_id: str) -> int:
        key = self.cfg.key(name)

        def head() -> object:
            if version_id:
                return self.s3.head_object(Bucket=self.cfg.bucket, Key=key, VersionId=version_id)
            return self.s3.head_object(Bucket=self.cfg.bucket, Key=key)

        answer = self._call(f"reading the size of {name}", head)
        assert isinstance(answer, dict)
        return int(answer["ContentLength"])

    def names(self, under: str) -> list[str]:
        """The object names under `under` (relative to the target's prefix)."""
        prefix = self.cfg.key(under)
        found: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        strip = len(self.cfg.key(""))
        try:
            for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=prefix):
                found += [o["Key"][strip:] for o in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise describe(exc, f"listing {under}", self.cfg) from None
        return found

    def delete_version(self, name: str, version_id: str) -> None:
        """One version for good (only called once its lock has run out)."""
        key = self.cfg.key(name)

        def remove() -> object:
            if version_id:
                return self.s3.delete_object(Bucket=self.cfg.bucket, Key=key, VersionId=version_id)
            return self.s3.delete_object(Bucket=self.cfg.bucket, Key=key)

        self._call(f"removing {name}", remove)

    def extend_lock(self, name: str, version_id: str, until: datetime) -> None:
        key = self.cfg.key(name)
        mode: Literal["GOVERNANCE", "COMPLIANCE"] = (
            "COMPLIANCE" if self.cfg.lock_mode == "compliance" else "GOVERNANCE"
        )
        retention: ObjectLockRetentionTypeDef = {"Mode": mode, "RetainUntilDate": until}

        def extend() -> object:
            if version_id:
                return self.s3.put_object_retention(
                    Bucket=self.cfg.bucket, Key=key, VersionId=version_id,
                    Retention=retention,
                )  # fmt: skip
            return self.s3.put_object_retention(
                Bucket=self.cfg.bucket,
                Key=key,
                Retention=retention,
            )

        self._call(f"extending the lock of {name}", extend)

    # Multipart uploads

    def start_upload(self, name: str, until: datetime | None) -> str:
        key = self.cfg.key(name)
        answer = self._call(
            f"starting the upload of {name}",
            lambda: self.s3.create_multipart_upload(
                Bucket=self.cfg.bucket,
                Key=key,
                **self._lock_args(until),  # type: ignore[arg-type]
            ),
        )
        assert isinstance(answer, dict)
        return str(answer["UploadId"])

    def uploaded_parts(self, name: str, upload_id: str) -> dict[int, str] | None:
        """The parts an upload holds (number -> ETag); None when the upload is gone."""
        key = self.cfg.key(name)
        parts: dict[int, str] = {}
        marker = 0
        while True:
            try:
                page = self.s3.list_parts(
                    Bucket=self.cfg.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                    return None
                raise describe(exc, f"listing the parts of {name}", self.cfg) from None
            except BotoCoreError as exc:
                raise describe(exc, f"listing the parts of {name}", self.cfg) from None
            for part in page.get("Parts", []):
                parts[part["PartNumber"]] = part["ETag"]
            if not page.get("IsTruncated"):
                return parts
            marker = int(page.get("NextPartNumberMarker", 0))

    def put_part(self, name: str, upload_id: str, number: int, body: bytes) -> str:
        self.throttle.take(len(body))
        key = self.cfg.key(name)
        answer = self._call(
            f"uploading part {number} of {name}",
            lambda: self.s3.upload_part(
                Bucket=self.cfg.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            ),
        )
        assert isinstance(answer, dict)
        return str(answer["ETag"])

    def finish_upload(self, name: str, upload_id: str, etags: dict[int, str]) -> str:
        key = self.cfg.key(name)
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        answer = self._call(
            f"completing the upload of {name}",
            lambda: self.s3.complete_multipart_upload(
                Bucket=self.cfg.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            ),
        )
        assert isinstance(answer, dict)
        return str(answer.get("VersionId", ""))

    def abort_upload(self, name: str, upload_id: str) -> None:
        key = self.cfg.key(name)
        try:
            self.s3.abort_multipart_upload(Bucket=self.cfg.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not abort upload of %s: %s", name, describe(exc, "abort", self.cfg))

    def stale_uploads(self, older_than: timedelta) -> list[tuple[str, str]]:
        """Multipart uploads under the prefix started before now - `older_than`."""
        try:
            answer = self.s3.list_multipart_uploads(Bucket=self.cfg.bucket, Prefix=self.cfg.key(""))
        except (ClientError, BotoCoreError) as exc:
            raise describe(exc, "listing unfinished uploads", self.cfg) from None
        strip = len(self.cfg.key(""))
        limit = utcnow() - older_than
        return [
            (u["Key"][strip:], u["UploadId"])
            for u in answer.get("Uploads", [])
            if u["Initiated"] < limit
        ]
