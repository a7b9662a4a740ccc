"""Offsite copies with the product's processes (issue 17): an upload cut short by
a killed hub resumes from the parts the bucket holds; a lost hub (data directory
and repository gone) is rebuilt from the bucket and its key alone, and restores
the VM to vCenter identical to the source at its backup."""

from __future__ import annotations

import filecmp
import random
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from sendense.common.config import load_settings
from sendense.hub.config import HubSettings
from sendense.hub.copy.sealing import CopyKey
from sendense.hub.copy.targets import TargetSpec
from sendense.hub.service import Hub
from tests.rig.chains import hub_backup
from tests.rig.cli import sendense
from tests.rig.hub import HubProcess
from tests.rig.node_tasks import unique
from tests.rig.s3 import SeaweedS3
from tests.rig.site import Site
from tests.rig.tasks import wait_task
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, SCSI1, MiB, create_vm, fill, flat_file

DISKS = [(2000, 24 * MiB, SCSI0), (2016, 8 * MiB, SCSI1)]


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path / "s3") as server:
        yield server


def in_process(hub: HubProcess) -> Hub:
    env = hub.env
    return Hub.open(
        load_settings(
            HubSettings,
            data_dir=hub.data_dir,
            database_url=env["SENDENSE_HUB_DATABASE_URL"],
            repository_roots=env["SENDENSE_HUB_REPOSITORY_ROOTS"],
            nbd_port_min=int(env["SENDENSE_HUB_NBD_PORT_MIN"]),
            nbd_port_max=int(env["SENDENSE_HUB_NBD_PORT_MAX"]),
            tunnel_group=hub.tunnel_group,
            min_free_bytes=0,
        )
    )


def test_an_upload_killed_with_the_hub_resumes_from_the_parts_in_the_bucket(
    tmp_path: Path, s3: SeaweedS3
) -> None:
    bucket = s3.make_bucket("resume", lock=False)
    opened: list[httpx.Client] = []
    hub = HubProcess(tmp_path / "hub", f"sqlite:///{tmp_path / 'hub.db'}")
    hub.start()  # its data directory, database and token
    hub.stop()
    service = in_process(hub)
    try:
        (tmp_path / "repo").mkdir()
        service.repos.add(str(tmp_path / "repo"))
        disk = random.Random(17).randbytes(48 * MiB)  # random: three parts of 16 MiB
        point = hub_backup(service, "resume-vm", {2000: disk}, {}, datetime.now(UTC))
        assert all(v.valid for v in service.verifier.verify([point]))
        spec = TargetSpec(
            name="offsite", endpoint=s3.endpoint, bucket=bucket,
            access_key=s3.access_key, secret_key=s3.secret_key, limit_mb_s=6.0,
        )  # fmt: skip
        service.copy_targets.add(spec)
    finally:
        service.close()
    try:
        hub.start()
        with hub.client(hub.initial_token()) as api:
            queued = api.post("/api/v1/copy-targets/offsite/copies", json={"point_id": point})
        assert queued.status_code == 202, queued.text
        client = s3.client()
        deadline = time.monotonic() + 60
        done_parts: list[Any] = []
        while not done_parts:
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            for upload in uploads:
                parts = client.list_parts(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                done_parts = parts.get("Parts", [])
            assert time.monotonic() < deadline, "no part went up"
            time.sleep(0.2)
        hub.kill9()
        hub.start()
        api = hub.client(hub.initial_token())
        opened.append(api)
        killed = wait_task(api, queued.json()["job_id"])
        assert killed["state"] == "failed"
        again = api.post("/api/v1/copy-targets/offsite/copies", json={"point_id": point})
        assert again.status_code == 202, again.text
        job = wait_task(api, again.json()["job_id"], timeout=120)
        assert job["state"] == "complete", job
        sent, kept = (int(n) for n in _counts(job["error"]))
        assert kept >= len(done_parts) >= 1
        assert sent + kept == 3
        points = api.get("/api/v1/copy-targets/offsite/points").json()
        assert [p["restore_point_id"] for p in points] == [point]
        assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    finally:
        for http in opened:
            http.close()
        hub.stop()
        hub.remove_accounts()


def _counts(note: str) -> tuple[str, str]:
    """(sent, kept) from a copy's note: '... N parts sent, M already in the bucket'."""
    words = note.split("parts sent,")
    return words[0].split()[-1], words[1].split()[0]


def test_a_lost_hub_is_rebuilt_from_the_bucket_and_restores_the_vm_to_vcenter(
    tmp_path: Path, s3: SeaweedS3, vcsim: Vcsim, si: Any
) -> None:
    bucket = s3.make_bucket("disaster", lock=True)
    name = unique("dr")
    source = create_vm(si, name, DISKS, cbt=True)
    sources = {key: flat_file(vcsim, source, key) for key, _, _ in DISKS}
    fill(sources[2000], [(o * MiB, bytes([o + 1]) * MiB) for o in range(0, 24, 3)])
    fill(sources[2016], [(MiB, b"\x42" * 3 * MiB)])
    first = Site(tmp_path / "a", {"copy_tick_s": "1"})
    key_file = tmp_path / "offsite.key"
    secret = {"SENDENSE_COPY_SECRET_KEY": s3.secret_key}
    target = [
        "--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "hub-1",
        "--access-key", s3.access_key, "--lock", "compliance", "--lock-days", "1",
    ]  # fmt: skip
    try:
        first.start()
        first.prepare(vcsim, tmp_path / "a" / "repo")
        env = first.cli_env()
        for round_ in range(2):
            if round_:
                fill(sources[2000], [(5 * MiB, b"\x77" * MiB)])
            done = sendense("backup", "run", name, "--watch", env=env)
            assert done.returncode == 0, done.stdout + done.stderr
        expected = {k: tmp_path / f"expected-{k}.raw" for k in sources}
        for key, path in sources.items():
            shutil.copyfile(path, expected[key])
        assert sendense("verify", name, env=env).returncode == 0
        added = sendense(
            "copy", "target", "add", "offsite", *target, "--key-out", str(key_file),
            env=env | secret,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert "sendense-copy-key-1" in added.stdout
        points = first.api.get("/api/v1/restore-points", params={"vm": name}).json()
        for point in points:
            copied = sendense("copy", "point", "offsite", point["id"], env=env)
            assert copied.returncode == 0, copied.stdout + copied.stderr
        newest = points[-1]["id"]
        wait_for_object(s3, bucket, "hub-1/hub-config")  # the configuration went along
        node_name = first.name
    finally:
        first.stop()
    # The hub is lost: its data directory, database and repository.
    shutil.rmtree(tmp_path / "a")

    second = Site(tmp_path / "b")
    second.name = node_name  # the node enrolls again under its name
    restored = f"{name}-dr"
    try:
        second.start()
        second.prepare(None, tmp_path / "b" / "repo")
        env = second.cli_env()
        wrong = tmp_path / "wrong.key"
        wrong.write_text(CopyKey.generate().recovery_text())
        refused = sendense(
            "copy", "target", "add", "offsite", *target, "--key-file", str(wrong), env=env | secret
        )
        assert refused.returncode == 2, refused.stdout
        assert refused.stderr.count("\n") == 1
        assert "does not open the copies" in refused.stderr
        added = sendense(
            "copy", "target", "add", "offsite", *target, "--key-file", str(key_file),
            env=env | secret,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        imported = sendense("copy", "import", "offsite", env=env)
        assert imported.returncode == 0, imported.stderr
        assert "2 restore points imported" in imported.stdout
        assert "1 vCenters" in imported.stdout
        fetched = sendense("copy", "fetch", "offsite", newest, env=env)
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        done = sendense("restore", "vm", newest, "--name", restored, "--watch", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        vm = si.content.searchIndex.FindByInventoryPath(f"DC0/vm/{restored}")
        assert vm is not None
        for key, path in expected.items():
            assert filecmp.cmp(path, flat_file(vcsim, vm, key), shallow=False), key
    finally:
        second.stop()


def wait_for_object(s3: SeaweedS3, bucket: str, key: str, timeout: float = 30) -> None:
    client = s3.client()
    deadline = time.monotonic() + timeout
    while not client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"):
        assert time.monotonic() < deadline, f"no {key} in {bucket}"
        time.sleep(0.3)
