"""kill -9 of the hub at random moments of a prune: after restart every kept restore
point reads as it did, and no file is left that no restore point uses."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from sendense.common.config import load_settings
from sendense.hub.api.queries import Queries
from sendense.hub.config import HubSettings
from sendense.hub.db.models import Merge, RestorePointDisk
from sendense.hub.service import Hub
from tests.rig.chains import hub_backup, same_as
from tests.rig.hub import HubProcess
from tests.rig.postgres import PostgresServer
from tests.rig.procs import pids_with

MiB = 1 << 20
SIZE = 24 * MiB


def in_process_hub(process: HubProcess) -> Hub:
    settings = load_settings(
        HubSettings,
        data_dir=process.data_dir,
        min_free_bytes=0,
        database_url=process.env["SENDENSE_HUB_DATABASE_URL"],
        repository_roots=process.env["SENDENSE_HUB_REPOSITORY_ROOTS"],
    )
    return Hub.open(settings)


def make_chain(hub: Hub, rng: random.Random, start: datetime) -> dict[str, bytes]:
    disk = bytearray(rng.randbytes(SIZE))
    sources = {}
    for n in range(6):
        changed = []
        if n:
            for _ in range(4):
                offset = rng.randrange(SIZE // MiB) * MiB
                disk[offset : offset + MiB] = rng.randbytes(MiB)
                changed.append((offset, MiB))
        point = hub_backup(
            hub, "crashvm", {2000: bytes(disk)}, {2000: changed}, start + timedelta(days=n)
        )
        sources[point] = bytes(disk)
    return sources


def check_repository(hub: Hub, repo: Path, sources: dict[str, bytes], scratch: Path) -> set[str]:
    with hub.db.session() as s:
        assert list(s.scalars(select(Merge))) == []  # every step rolled forward
        layers = {d.file_path: d.restore_point_id for d in s.scalars(select(RestorePointDisk))}
    files = {p.relative_to(repo).as_posix() for p in repo.rglob("*.qcow2")}
    assert files == set(layers)
    for relative, point in layers.items():
        assert same_as(repo / relative, sources[point], scratch), point
    return set(layers.values())


@pytest.mark.parametrize(
    ("backend", "seed"), [("sqlite", 1), ("sqlite", 2), ("sqlite", 3), ("postgresql", 4)]
)
def test_kill_9_during_prune_keeps_every_kept_point_restorable(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str, seed: int
) -> None:
    rng = random.Random(seed)
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.admin_url(server.create_database())
    process = HubProcess(tmp_path / "data", url)
    repo = tmp_path / "repo"
    repo.mkdir()
    hub = in_process_hub(process)
    try:
        hub.repos.add(str(repo))
        sources = make_chain(hub, rng, datetime(2026, 1, 1, tzinfo=UTC))
    finally:
        hub.close()
    try:
        process.start()
        token = process.initial_token()
        api = process.client(token)
        assert api.post("/api/v1/policies", json={"name": "one", "keep_last": 1}).status_code == 201
        killed_after = rng.uniform(0.05, 1.0)
        thread = threading.Thread(
            target=lambda: _ignore_errors(api, "/api/v1/prune", {"vm": "crashvm", "policy": "one"}),
            daemon=True,
        )
        thread.start()
        time.sleep(killed_after)
        process.kill9()
        thread.join(timeout=30)
        process.start()  # start-up rolls the merges forward
        hub = in_process_hub(process)
        try:
            kept = check_repository(hub, repo, sources, tmp_path)
            newest = max(kept, key=lambda p: Queries(hub.db).restore_point(p).completed_at or 0)
            assert newest == list(sources)[-1]
            print(f"killed after {killed_after:.2f} s: {len(kept)} of 6 points left")
            again = api.post("/api/v1/prune", json={"vm": "crashvm", "policy": "one"})
            assert again.status_code == 200, again.text
            assert check_repository(hub, repo, sources, tmp_path) == {list(sources)[-1]}
        finally:
            hub.close()
        api.close()
    finally:
        process.stop()
    assert pids_with(str(repo)) == []


def _ignore_errors(api: httpx.Client, path: str, body: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the hub is killed under the request
        api.post(path, json=body)
