"""Offsite copies (issue 17) against SeaweedFS's real S3 server: points uploaded
compressed, encrypted and object-locked (full, incremental, synthetic full), a
new hub rebuilt from the bucket and its key alone, the bytes of every point the
same as the source's, locked versions surviving deletion and overwriting, an
upload cut short resuming without sending its parts again, a corrupted object
found, and each wrong setting refused with a clear error."""

from __future__ import annotations

import dataclasses
import random
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from sendense.common.errors import InvalidInput
from sendense.hub.api.app import create_app
from sendense.hub.auth.roles import Role
from sendense.hub.copy.bucket import Bucket, CopyTargetError
from sendense.hub.copy.sealing import CopyKey
from sendense.hub.copy.targets import TargetSpec
from sendense.hub.db.models import (
    ACTIVE_JOB_STATES,
    CopyObject,
    CopyPoint,
    Job,
    JobState,
    RestorePoint,
    RestorePointDisk,
    TaskKind,
)
from sendense.hub.retention.rules import KeepRules
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from tests.conftest import make_settings
from tests.rig.chains import hub_backup
from tests.rig.s3 import SeaweedS3

MiB = 1 << 20
SIZE = 8 * MiB
VM = "copy-source-vm"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path / "s3") as server:
        yield server


def open_hub(root: Path) -> Hub:
    hub = Hub.open(make_settings(root, "sqlite:///" + str(root / "hub.db")))
    (root / "repo").mkdir(exist_ok=True)
    hub.repos.add(str(root / "repo"))
    return hub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    hub = open_hub(tmp_path / "first")
    try:
        yield hub
    finally:
        hub.reconcile("test ended")
        hub.close()


def spec(s3: SeaweedS3, bucket: str, **extra: object) -> TargetSpec:
    fields: dict[str, object] = {
        "name": "offsite",
        "endpoint": s3.endpoint,
        "bucket": bucket,
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
        "prefix": "site-a",
    }
    return TargetSpec(**(fields | extra))  # type: ignore[arg-type]


def finished(hub: Hub, task_id: str, timeout: float = 120) -> tuple[JobState, str | None]:
    deadline = time.monotonic() + timeout
    while True:
        task = hub.tasks.get(task_id)
        if task.state in (JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED):
            return JobState(task.state), task.error
        assert time.monotonic() < deadline, f"task {task_id} still {task.state}"
        time.sleep(0.1)


def disks_of(rng: random.Random) -> dict[int, bytearray]:
    """Half random data, half zeros: what compression meets in real disks."""
    return {k: bytearray(rng.randbytes(SIZE // 2) + bytes(SIZE // 2)) for k in (2000, 2001)}


def back_up(hub: Hub, disks: dict[int, bytearray], rng: random.Random, day: int) -> str:
    changed: dict[int, list[tuple[int, int]]] = {}
    for key, data in disks.items():
        offset = rng.randrange(SIZE // MiB) * MiB
        data[offset : offset + MiB] = rng.randbytes(MiB)
        changed[key] = [(offset, MiB)]
    when = datetime(2026, 11, 1, 22, tzinfo=UTC) + timedelta(days=day)
    point = hub_backup(hub, VM, {k: bytes(v) for k, v in disks.items()}, changed, when)
    verdicts = hub.verifier.verify([point])
    assert all(v.valid for v in verdicts)
    return point


def raw_of(hub: Hub, point_id: str, disk_key: int, scratch: Path) -> bytes:
    with hub.db.session() as s:
        disk = s.scalars(
            select(RestorePointDisk).where(
                RestorePointDisk.restore_point_id == point_id, RestorePointDisk.disk_key == disk_key
            )
        ).one()
        repo_id = s.get_one(RestorePoint, point_id).repository_id
    repo = hub.repos.get(repo_id)
    raw = scratch / f"{point_id}-{disk_key}.raw"
    QemuImg().convert(hub.repos.resolve(repo, disk.file_path), raw, ["-O", "raw"])
    try:
        return raw.read_bytes()
    finally:
        raw.unlink()


def kinds(hub: Hub, point_id: str) -> set[str]:
    with hub.db.session() as s:
        return set(s.scalars(select(CopyObject.kind).where(CopyObject.point_id == point_id)))


def test_points_copied_full_incremental_and_synthetic_restore_on_a_new_hub_from_the_bucket(
    hub: Hub, s3: SeaweedS3, tmp_path: Path
) -> None:
    bucket = s3.make_bucket("copies", lock=True)
    info, recovery = hub.copy_targets.add(
        spec(s3, bucket, lock_mode="governance", lock_days=1, full_every=2)
    )
    assert recovery is not None
    assert recovery.startswith("sendense-copy-key-1 ")
    rng = random.Random(17)
    disks = disks_of(rng)
    sources: dict[str, dict[int, bytes]] = {}
    for day in range(3):
        point = back_up(hub, disks, rng, day)
        sources[point] = {k: bytes(v) for k, v in disks.items()}
        state, error = finished(hub, hub.copies.submit_copy("offsite", point))
        assert state == JobState.COMPLETE, error
    first, second, third = sources
    assert kinds(hub, first) == {"full"}
    assert kinds(hub, second) == {"incremental"}
    assert kinds(hub, third) == {"full"}  # synthetic: the copy's chain reached full_every
    # Copying a point again sends nothing.
    state, note = finished(hub, hub.copies.submit_copy("offsite", second))
    assert state == JobState.COMPLETE
    assert "already" in (note or "")

    # Object names leak nothing; compression pays for the encryption's frames (the
    # layers are sparse QCOW2, their zeros not stored: only metadata and random
    # data are left to compress), and no plaintext is in the bucket.
    objects = s3.client().list_objects_v2(Bucket=bucket)["Contents"]
    names = [o["Key"] for o in objects]
    assert all(re.fullmatch(r"site-a/((data|points)/[0-9a-f]{32}|key-check)", n) for n in names)
    with hub.db.session() as s:
        sealed = sum(s.scalars(select(CopyObject.sealed_size)))
        plain = sum(s.scalars(select(CopyObject.plain_size)))
    assert sealed < plain, (sealed, plain)
    body = s3.client().get_object(Bucket=bucket, Key=names[0])["Body"].read()
    assert bytes(sources[first][2000][:4096]) not in body

    # The hub is lost: a new one, the bucket and the key rebuild the catalogue.
    wrong = open_hub(tmp_path / "wrong")
    try:
        with pytest.raises(InvalidInput, match="does not open the copies"):
            wrong.copy_targets.add(spec(s3, bucket, lock_mode="governance", lock_days=1),
                                   CopyKey.generate())  # fmt: skip
    finally:
        wrong.close()
    new = open_hub(tmp_path / "second")
    try:
        key = CopyKey.from_recovery_text(recovery)
        new.copy_targets.add(spec(s3, bucket, lock_mode="governance", lock_days=1), key)
        assert new.copies.import_points("offsite")[0] == 3
        for point, by_disk in sources.items():
            state, error = finished(new, new.copies.submit_fetch("offsite", point, None))
            assert state == JobState.COMPLETE, error
            for disk_key, data in by_disk.items():
                assert raw_of(new, point, disk_key, tmp_path) == data, (point, disk_key)
        # A fetched point verifies like any other.
        assert all(v.valid for v in new.verifier.verify(list(sources)))
    finally:
        new.reconcile("test ended")
        new.close()
    assert info.key_fingerprint == key.fingerprint


def test_locked_versions_outlive_deletes_and_overwrites_and_verification_finds_a_changed_object(
    hub: Hub, s3: SeaweedS3, tmp_path: Path
) -> None:
    locked = s3.make_bucket("locked", lock=True)
    hub.copy_targets.add(spec(s3, locked, lock_mode="compliance", lock_days=1))
    rng = random.Random(18)
    disks = disks_of(rng)
    point = back_up(hub, disks, rng, 0)
    assert finished(hub, hub.copies.submit_copy("offsite", point))[0] == JobState.COMPLETE
    client = s3.client()
    with hub.db.session() as s:
        objects = [(o.name, o.version_id) for o in s.scalars(select(CopyObject))]
    for name, version in objects:
        key = f"site-a/{name}"
        client.put_object(Bucket=locked, Key=key, Body=b"ransomware was here")
        client.delete_object(Bucket=locked, Key=key)  # a delete marker on top
        with pytest.raises(Exception, match="AccessDenied"):
            client.delete_object(Bucket=locked, Key=key, VersionId=version)
    # The locked versions are whole: verification passes, the point restores.
    state, error = finished(hub, hub.copies.submit_verify("offsite"))
    assert state == JobState.COMPLETE
    assert error is None, error
    with hub.db.session() as s:
        s.execute(delete(RestorePointDisk).where(RestorePointDisk.restore_point_id == point))
        s.execute(delete(RestorePoint).where(RestorePoint.id == point))
    state, error = finished(hub, hub.copies.submit_fetch("offsite", point, None))
    assert state == JobState.COMPLETE, error
    assert raw_of(hub, point, 2000, tmp_path) == bytes(disks[2000])

    # On a bucket without lock, a changed object is found by verification.
    open_bucket = s3.make_bucket("unlocked", lock=False)
    hub.copy_targets.add(spec(s3, open_bucket, name="plain"))
    second = back_up(hub, disks, rng, 1)
    assert finished(hub, hub.copies.submit_copy("plain", second))[0] == JobState.COMPLETE
    with hub.db.session() as s:
        target_objects = s.scalars(
            select(CopyObject.name).where(CopyObject.point_id == second)
        ).all()
    victim = f"site-a/{target_objects[0]}"
    body = bytearray(client.get_object(Bucket=open_bucket, Key=victim)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=open_bucket, Key=victim, Body=bytes(body))
    state, note = finished(hub, hub.copies.submit_verify("plain"))
    assert state == JobState.COMPLETE
    assert "1 of 1 copied points invalid" in (note or "")
    with hub.db.session() as s:
        copied = s.scalars(select(CopyPoint).where(CopyPoint.restore_point_id == second)).one()
        assert copied.status == "invalid"
        assert "does not open" in (copied.verify_error or "")


def test_an_upload_cut_short_resumes_without_sending_its_parts_again_within_its_limit(
    hub: Hub, s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.make_bucket("resume", lock=False)
    hub.copy_targets.add(spec(s3, bucket, limit_mb_s=40.0))
    rng = random.Random(19)
    disks = {2000: bytearray(rng.randbytes(6 * 16 * MiB))}  # six parts of 16 MiB
    point = hub_backup(hub, VM, {2000: bytes(disks[2000])}, {}, datetime(2026, 11, 1, tzinfo=UTC))
    assert all(v.valid for v in hub.verifier.verify([point]))
    real = Bucket.put_part
    sent: list[int] = []

    def cut_after_three(self: Bucket, name: str, upload_id: str, number: int, body: bytes) -> str:
        if len(sent) >= 3:
            raise CopyTargetError("the link went down (injected by the test)")
        sent.append(number)
        return real(self, name, upload_id, number, body)

    monkeypatch.setattr(Bucket, "put_part", cut_after_three)
    state, error = finished(hub, hub.copies.submit_copy("offsite", point))
    assert state == JobState.FAILED
    assert "the link went down" in (error or "")
    monkeypatch.setattr(Bucket, "put_part", real)
    started = time.monotonic()
    task = hub.copies.submit_copy("offsite", point)
    state, note = finished(hub, task)
    elapsed = time.monotonic() - started
    assert state == JobState.COMPLETE, note
    assert "3 parts sent, 3 already in the bucket" in (note or ""), note
    # The limit holds: 3 parts of ~16 MiB at 40 MB/s take at least 1.2 s.
    sent_bytes = 3 * 16 * MiB
    assert sent_bytes / elapsed <= 40e6 * 1.1, sent_bytes / elapsed
    with hub.db.session() as s:
        assert s.scalar(select(func.count()).select_from(CopyPoint)) == 1


def test_wrong_settings_are_refused_clearly_and_nothing_local_is_touched(
    hub: Hub, s3: SeaweedS3
) -> None:
    unlocked = s3.make_bucket("nolock", lock=False)
    with pytest.raises(CopyTargetError, match="has no object lock"):
        hub.copy_targets.add(spec(s3, unlocked, lock_mode="compliance", lock_days=3))
    with pytest.raises(CopyTargetError, match="refused the credentials") as refused:
        hub.copy_targets.add(spec(s3, unlocked, secret_key="not-the-secret"))
    assert "not-the-secret" not in str(refused.value)
    with pytest.raises(CopyTargetError, match="cannot be reached"):
        hub.copy_targets.add(spec(s3, unlocked, endpoint="http://127.0.0.1:1"))
    with pytest.raises(CopyTargetError, match="does not exist"):
        hub.copy_targets.add(spec(s3, "no-such-bucket"))
    with pytest.raises(InvalidInput, match="lock mode"):
        hub.copy_targets.add(spec(s3, unlocked, lock_mode="forever"))
    assert hub.copy_targets.list() == []
    rng = random.Random(20)
    point = back_up(hub, disks_of(rng), rng, 0)
    hub.copy_targets.add(spec(s3, unlocked))
    s3.stop()  # the endpoint goes away mid-life
    state, error = finished(hub, hub.copies.submit_copy("offsite", point))
    assert state == JobState.FAILED
    assert "cannot be reached" in (error or ""), error
    with hub.db.session() as s:
        assert s.get_one(RestorePoint, point).status == "complete"


def test_the_api_adds_copies_lists_and_guards_targets_and_never_shows_the_s3_secret(
    hub: Hub, s3: SeaweedS3
) -> None:
    bucket = s3.make_bucket("api", lock=True)
    admin = hub.tokens.create("copy-admin", Role.ADMIN)
    operator = hub.tokens.create("copy-operator", Role.OPERATOR)
    viewer = hub.tokens.create("copy-viewer", Role.VIEWER)
    body = {
        "name": "offsite",
        "endpoint": s3.endpoint,
        "bucket": bucket,
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
        "lock": "governance",
        "lock_days": 2,
    }
    rng = random.Random(21)
    point = back_up(hub, disks_of(rng), rng, 0)
    with TestClient(create_app(hub)) as client:

        def as_(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        refused = client.post("/api/v1/copy-targets", json=body, headers=as_(operator))
        assert refused.status_code == 403
        bad = client.post(
            "/api/v1/copy-targets", json=body | {"lock": "forever"}, headers=as_(admin)
        )
        assert bad.status_code == 422
        made = client.post("/api/v1/copy-targets", json=body, headers=as_(admin))
        assert made.status_code == 201, made.text
        recovery = made.json()["recovery_key"]
        assert recovery.startswith("sendense-copy-key-1")
        listed = client.get("/api/v1/copy-targets", headers=as_(viewer))
        assert listed.json()[0]["lock_mode"] == "governance"
        assert s3.secret_key not in listed.text
        assert recovery.split()[1] not in listed.text
        assert (
            client.post("/api/v1/copy-targets/offsite/key", headers=as_(operator)).status_code
            == 403
        )
        exported = client.post("/api/v1/copy-targets/offsite/key", headers=as_(admin))
        assert exported.json()["recovery_key"] == recovery
        queued = client.post(
            "/api/v1/copy-targets/offsite/copies", json={"point_id": point}, headers=as_(operator)
        )
        assert queued.status_code == 202, queued.text
        assert finished(hub, queued.json()["job_id"])[0] == JobState.COMPLETE
        points = client.get("/api/v1/copy-targets/offsite/points", headers=as_(viewer)).json()
        assert [p["restore_point_id"] for p in points] == [point]
        missing = client.post(
            "/api/v1/copy-targets/nowhere/copies", json={"point_id": point}, headers=as_(admin)
        )
        assert missing.status_code == 404
        assert "does not exist" in missing.json()["message"]
        audit = client.get("/api/v1/audit", headers=as_(admin)).json()
        assert any(a["action"] == "/api/v1/copy-targets/{name}/key" for a in audit)


def test_a_target_copies_new_points_by_itself_prunes_whole_chains_and_carries_the_configuration(
    hub: Hub, s3: SeaweedS3, tmp_path: Path
) -> None:
    plain = s3.make_bucket("auto", lock=False)
    locked = s3.make_bucket("auto-locked", lock=True)
    _, recovery = hub.copy_targets.add(spec(s3, plain, full_every=2))
    hub.copy_targets.add(
        spec(s3, locked, name="locked", lock_mode="governance", lock_days=1, full_every=2)
    )
    for name in ("offsite", "locked"):
        hub.copy_targets.set_policy(name, "copy-*", None)
    hub.policies.create("gold", KeepRules(daily=7), None, None)
    rng = random.Random(22)
    disks = disks_of(rng)
    points: list[str] = []
    for day in range(4):
        points.append(back_up(hub, disks, rng, 40 + day))  # after the targets were added
        while hub.copies.sweep():  # the hub sweeps every minute
            for task in active_copies(hub):
                assert finished(hub, task)[0] == JobState.COMPLETE
    assert held(hub, "offsite") == set(points)
    assert held(hub, "locked") == set(points)
    assert hub.copies.sweep() == 0  # nothing new
    # Verification comes by itself once its time has come.
    hub.copies.settings = dataclasses.replace(hub.copies.settings, verify_every_s=0.0)
    hub.copies.sweep()
    for task in active_tasks_of(hub, TaskKind.VERIFY):
        assert finished(hub, task)[0] == JobState.COMPLETE
    with hub.db.session() as s:
        checked = s.scalars(select(CopyPoint.verified_at)).all()
    assert len(checked) == 8
    assert all(checked)
    hub.copies.settings = dataclasses.replace(hub.copies.settings, verify_every_s=86400.0)
    first, second, third, fourth = points
    assert kinds(hub, third) == {"full"}  # the copy's chain reached full_every

    # Keep the last two: the chain of the first two points goes, whole; on the
    # locked target it waits for its locks to run out.
    hub.copy_targets.set_policy("offsite", "copy-*", KeepRules(last=2))
    hub.copy_targets.set_policy("locked", "copy-*", KeepRules(last=2))
    pruned = hub.copies.prune("offsite")
    assert (pruned.kept, pruned.removed, pruned.waiting) == (2, 2, 0)
    assert held(hub, "offsite") == {third, fourth}
    versions = s3.client().list_object_versions(Bucket=plain).get("Versions", [])
    with hub.db.session() as s:
        gone = {o.name for o in s.scalars(select(CopyObject)) if o.point_id in (first, second)}
    assert not {v["Key"].removeprefix("site-a/") for v in versions} & gone
    # Locked: nothing goes; a kept object whose lock nears its end is extended.
    with hub.db.session() as s:
        soon = datetime.now(UTC) + timedelta(hours=1)
        target_id = hub.copy_targets.open("locked").info.id
        for o in s.scalars(select(CopyObject).where(CopyObject.target_id == target_id)):
            o.retain_until = soon if o.point_id == fourth else o.retain_until
    waited = hub.copies.prune("locked")
    assert (waited.removed, waited.waiting) == (0, 1)
    assert waited.extended >= 2  # the fourth point's layers (one per disk)
    assert held(hub, "locked") == set(points)
    with hub.db.session() as s:
        fourth_object = s.scalars(
            select(CopyObject).where(
                CopyObject.target_id == target_id, CopyObject.point_id == fourth
            )
        ).first()
        assert fourth_object is not None
        name, version = fourth_object.name, fourth_object.version_id
    lock = s3.client().get_object_retention(Bucket=locked, Key=f"site-a/{name}", VersionId=version)
    assert lock["Retention"]["RetainUntilDate"] > datetime.now(UTC) + timedelta(hours=20)

    # The configuration went along: a new hub finds the policy and the users.
    hub.users.create("ops-anna", Role.OPERATOR, "correct horse battery staple")
    assert hub.copies.sweep() == 0  # what retention removed is not copied again
    assert held(hub, "offsite") == {third, fourth}
    assert recovery is not None
    new = open_hub(tmp_path / "rebuilt")
    try:
        new.copy_targets.add(spec(s3, plain), CopyKey.from_recovery_text(recovery))
        added, config = new.copies.import_points("offsite")
        assert added == 2
        assert config["policies"] == 1
        assert config["users"] >= 1
        assert new.policies.get("gold").rules.daily == 7
        assert (
            new.users.login("ops-anna", "correct horse battery staple", None)[0].role == "operator"
        )
    finally:
        new.reconcile("test ended")
        new.close()


def active_copies(hub: Hub) -> list[str]:
    return active_tasks_of(hub, TaskKind.COPY)


def active_tasks_of(hub: Hub, kind: TaskKind) -> list[str]:
    with hub.db.session() as s:
        return list(
            s.scalars(select(Job.id).where(Job.kind == kind, Job.state.in_(ACTIVE_JOB_STATES)))
        )


def held(hub: Hub, target: str) -> set[str]:
    target_id = hub.copy_targets.open(target).info.id
    with hub.db.session() as s:
        return set(
            s.scalars(select(CopyPoint.restore_point_id).where(CopyPoint.target_id == target_id))
        )
