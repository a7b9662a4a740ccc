"""Offsite copies: a restore point uploaded to S3 (zstd + AES-256-GCM, our
multipart) beside boto3's plain upload of the same bytes, and fetched back beside
boto3's plain download, against SeaweedFS's S3 server on this machine, same run.

    .venv/bin/python bench/offsite_copy.py [--disk-mib 512]

The disk is half random data, half zeros; the hub stores no zero clusters, so
the QCOW2 layer holds the random half and compression finds little left to do
(`copy_compression_ratio`, layer bytes over bucket bytes; `disk_vs_bucket_ratio`
in the section counts the disk's bytes). MB = 10^6 bytes of the layer file.
Writes "copy" with the top-level `copy_upload_mb_s`, `copy_restore_mb_s`
(absolute: SeaweedFS on the same 2 cores is their only peer, given beside them),
`copy_vs_plain_upload` (target >= 0.7), `copy_restore_vs_plain_download` and
`copy_compression_ratio` to bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boto3.s3.transfer import TransferConfig
from results import record
from sqlalchemy import select
from tests.rig.s3 import SeaweedS3
from verify import backup, bench_hub

from sendense.hub.copy.sealing import CopyKey
from sendense.hub.copy.targets import TargetSpec
from sendense.hub.db.models import CopyObject, JobState
from sendense.hub.service import Hub

MiB = 1 << 20
KEY = 2000


def wait(hub: Hub, task_id: str) -> float:
    started = time.monotonic()
    while True:
        task = hub.tasks.get(task_id)
        if task.state in (JobState.COMPLETE, JobState.FAILED):
            if task.state != JobState.COMPLETE:
                raise SystemExit(f"task {task_id}: {task.error}")
            return time.monotonic() - started
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--disk-mib", type=int, default=512)
    args = parser.parse_args()
    size = args.disk_mib * MiB
    with tempfile.TemporaryDirectory(prefix="bench-copy-") as tmp:
        root = Path(tmp)
        with SeaweedS3(root / "s3") as s3:
            figures, ratios = run(root, s3, size, args.disk_mib)
    record("copy", figures, ratios)
    print(json.dumps(figures | {k: round(v, 3) for k, v in ratios.items()}, indent=2))


def run(
    root: Path, s3: SeaweedS3, size: int, disk_mib: int
) -> tuple[dict[str, Any], dict[str, float]]:
    disk = root / "disk.raw"
    with disk.open("wb") as f:
        f.write(os.urandom(size // 2))
        f.write(bytes(size // 2))
    s3.make_bucket("bench", lock=False)
    target = TargetSpec(
        name="bench", endpoint=s3.endpoint, bucket="bench",
        access_key=s3.access_key, secret_key=s3.secret_key, prefix="copies",
    )  # fmt: skip
    hub = bench_hub(root / "first")
    try:
        point = backup(hub, "bench-copy", {KEY: disk}, {KEY: [(0, size)]}, "full")
        hub.verifier.verify([point])
        recovery = hub.copy_targets.add(target)[1]
        assert recovery is not None
        # A fresh SeaweedFS grows its volumes on the first writes: whoever uploads
        # first would pay for it. The same bytes go up once, unmeasured.
        warm = next((root / "first" / "repo").rglob("*.qcow2"))
        s3.client().upload_file(str(warm), "bench", "warm-up/layer")
        upload_s = wait(hub, hub.copies.submit_copy("bench", point))
        with hub.db.session() as s:
            obj = s.scalars(select(CopyObject)).one()
            plain_bytes, sealed_bytes = obj.plain_size, obj.sealed_size
        layer = next((root / "first" / "repo").rglob("*.qcow2"))
    finally:
        hub.close()
    client = s3.client()
    transfer = TransferConfig(multipart_chunksize=16 * MiB, max_concurrency=4)
    started = time.monotonic()
    client.upload_file(str(layer), "bench", "plain/layer", Config=transfer)
    plain_upload_s = time.monotonic() - started
    started = time.monotonic()
    client.download_file("bench", "plain/layer", str(root / "plain.qcow2"), Config=transfer)
    plain_download_s = time.monotonic() - started
    second = bench_hub(root / "second")
    try:
        second.copy_targets.add(target, CopyKey.from_recovery_text(recovery))
        second.copies.import_points("bench")
        restore_s = wait(second, second.copies.submit_fetch("bench", point, None))
    finally:
        second.close()
    figures: dict[str, Any] = {
        "disk_mib": disk_mib,
        "disk_bytes": size,
        "layer_bytes": plain_bytes,
        "disk_vs_bucket_ratio": round(size / sealed_bytes, 3),
        "sealed_bytes": sealed_bytes,
        "copy_upload_s": round(upload_s, 2),
        "plain_upload_s": round(plain_upload_s, 2),
        "copy_restore_s": round(restore_s, 2),
        "plain_download_s": round(plain_download_s, 2),
        "plain_upload_mb_s": round(plain_bytes / plain_upload_s / 1e6, 1),
        "plain_download_mb_s": round(plain_bytes / plain_download_s / 1e6, 1),
    }
    upload_mb_s = plain_bytes / upload_s / 1e6
    restore_mb_s = plain_bytes / restore_s / 1e6
    ratios = {
        "copy_upload_mb_s": upload_mb_s,
        "copy_restore_mb_s": restore_mb_s,
        "copy_vs_plain_upload": plain_upload_s / upload_s,
        "copy_restore_vs_plain_download": plain_download_s / restore_s,
        "copy_compression_ratio": plain_bytes / sealed_bytes,
    }
    return figures, ratios


if __name__ == "__main__":
    main()
