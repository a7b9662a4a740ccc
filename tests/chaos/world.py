"""What the chaos loop works on: a site (hub, node, tunnel), one two-disk VM in the
simulator, the repository, and what each complete restore point must read as
(the SHA-256 of each source disk when it was backed up)."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.chaos.pg import StoppablePostgres
from tests.chaos.storage import Storage
from tests.rig.node_tasks import snapshot_names, unique
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file

DISKS = {2000: 32 * MiB, 2001: 16 * MiB}
REPO = "chaos"
POLICY = "chaos"
KEEP_LAST = 3
Digests = dict[int, str]


class World:
    def __init__(
        self,
        site: Site,
        vcsim: Vcsim,
        si: Any,
        storage: Storage,
        seed: int,
        postgres: StoppablePostgres | None = None,
    ) -> None:
        self.site = site
        self.postgres = postgres
        self.vcsim = vcsim
        self.storage = storage
        self.rng = random.Random(seed)
        self.name = unique("chaos")
        self.vm = create_vm(si, self.name, [(k, n, SCSI0) for k, n in DISKS.items()], cbt=True)
        for key, size in DISKS.items():
            fill(self.flat(key), [(o, self.rng.randbytes(MiB)) for o in range(0, size, MiB)])
        # restore point id -> the source's digests when it was backed up
        self.expected: dict[str, Digests] = {}
        self.engine = create_engine(site.hub.env["SENDENSE_HUB_DATABASE_URL"], poolclass=NullPool)

    # -- setup -----------------------------------------------------------------------

    def prepare(self) -> None:
        api = self.site.api
        added = api.post(
            "/api/v1/repositories", json={"path": str(self.storage.repo), "name": REPO}
        )
        assert added.status_code == 201, added.text
        policy = api.post("/api/v1/policies", json={"name": POLICY, "keep_last": KEEP_LAST})
        assert policy.status_code == 201, policy.text

    # -- the source ------------------------------------------------------------------

    def flat(self, key: int) -> Path:
        return flat_file(self.vcsim, self.vm, key)

    def change(self, mib: int) -> None:
        """The guest writes `mib` random MiB across its disks."""
        writes: dict[int, list[tuple[int, bytes]]] = {k: [] for k in DISKS}
        for _ in range(mib):
            key = self.rng.choice(list(DISKS))
            writes[key].append(
                (self.rng.randrange(DISKS[key] // MiB) * MiB, self.rng.randbytes(MiB))
            )
        for key, pairs in writes.items():
            if pairs:
                fill(self.flat(key), pairs)

    def digests(self) -> Digests:
        return {k: hashlib.sha256(self.flat(k).read_bytes()).hexdigest() for k in DISKS}

    def snapshots(self) -> list[str]:
        return [n for n in snapshot_names(self.vm) if n.startswith("sendense-")]

    # -- the hub -----------------------------------------------------------------------

    def start_backup(self, kind: str = "auto") -> str:
        started = self.site.api.post("/api/v1/backups", json={"vm": self.name, "type": kind})
        assert started.status_code == 202, started.text
        job_id: str = started.json()["job_id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.site.api.get(f"/api/v1/jobs/{job_id}").json()
        return job

    def points(self) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = self.site.api.get(
            f"/api/v1/restore-points?vm={self.name}"
        ).json()
        return points

    def record(self, job_id: str, digests: Digests) -> bool:
        """A job that completed: its point must read as the source did."""
        for point in self.points():
            if point["job_id"] == job_id and point["status"] == "complete":
                self.expected[point["id"]] = digests
                return True
        return False

    def backup(self, kind: str = "auto") -> dict[str, Any]:
        digests = self.digests()
        job = self.site.wait_job(self.start_backup(kind), timeout=180)
        if job["state"] == "complete":
            assert self.record(job["id"], digests), f"job {job['id']} complete without its point"
        return job

    def prune(self) -> httpx.Response:
        done = self.site.api.post("/api/v1/prune", json={"vm": self.name, "policy": POLICY})
        if done.status_code == 200:
            self.forget_pruned()
        return done

    def forget_pruned(self) -> None:
        """After a prune: the points it removed are no longer expected; the newest
        must have been kept."""
        listed = {p["id"] for p in self.points()}
        if self.expected:
            newest = list(self.expected)[-1]
            assert newest in listed, f"prune removed the newest point {newest}"
        self.expected = {k: v for k, v in self.expected.items() if k in listed}

    def sql(self, query: str, **params: object) -> list[tuple[Any, ...]]:
        """Rows of the hub's database, read behind its back."""
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query), params)]

    def wait_node_idle(self, timeout: float = 60.0) -> None:
        """No backup runs on the node (its copy reads the source we are about to change)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                jobs = self.node_api().get("/api/v1/jobs").json()
            except httpx.HTTPError:
                jobs = []  # the node is down: it reads nothing
            if not [j for j in jobs if j["state"] in ("queued", "running")]:
                return
            assert time.monotonic() < deadline, f"the node still runs {jobs}"
            time.sleep(0.2)

    def node_api(self) -> httpx.Client:
        if not hasattr(self, "_node_api"):
            hub = self.site.hub_service()
            try:
                token = hub.nodes.api_token(self.site.name)
            finally:
                hub.db.dispose()
            self._node_api = httpx.Client(
                base_url=f"http://127.0.0.1:{self.site.node.port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
        return self._node_api

    def close(self) -> None:
        if hasattr(self, "_node_api"):
            self._node_api.close()
        self.engine.dispose()
