"""Fixtures: a hub on its own data directory, ports and database (SQLite, or a
private PostgreSQL), and a check that no test leaves a qemu-nbd behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sendense.common.config import load_settings
from sendense.hub.api.app import create_app
from sendense.hub.config import HubSettings
from sendense.hub.db.database import Database
from sendense.hub.service import Hub
from tests.rig.accounts import remove_group, unique_group, users_of
from tests.rig.net import free_port_range
from tests.rig.postgres import PostgresServer
from tests.rig.procs import kill_all, pids_with, wait_gone
from tests.rig.site import Site
from tests.rig.vcsim import Disconnect, Vcsim, running_vcsim


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    """One simulated vCenter for the session; each test makes its own VMs."""
    with running_vcsim(tmp_path_factory.mktemp("vcsim")) as server:
        yield server


@pytest.fixture
def si(vcsim: Vcsim) -> Iterator[Any]:
    """A logged-in pyVmomi ServiceInstance of the simulator, disconnected afterwards."""
    session = vcsim.connect()
    try:
        yield session
    finally:
        Disconnect(session)


@pytest.fixture(scope="session", autouse=True)
def no_leftover_vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    root = str(tmp_path_factory.getbasetemp())
    left = wait_gone(pids_with(root, name="vcsim"), timeout=5)
    kill_all(left)
    assert not left, f"vcsim processes left behind: {left}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to the schema's head, for fixtures to copy: a
    copy takes milliseconds, migrating an empty one 0.15-0.25 s a test."""
    path = tmp_path_factory.mktemp("template") / "hub.db"
    database = Database(f"sqlite:///{path}")
    database.migrate()
    database.dispose()
    assert not path.with_name("hub.db-wal").exists()  # all of it in the one file
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres: PostgresServer) -> str:
    """A database of the session's PostgreSQL migrated to the schema's head, for
    CREATE DATABASE ... TEMPLATE (0.3-0.5 s a test to migrate an empty one)."""
    name = postgres.create_database()
    database = Database(postgres.admin_url(name))
    database.migrate()
    database.dispose()  # a template must have no connections
    return name


def migrated_sqlite(request: pytest.FixtureRequest, path: Path) -> None:
    """`path` a copy of the migrated template; the hub migrates it again (nothing to do)."""
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    path.chmod(0o600)


@contextlib.contextmanager
def a_database(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, migrated: bool = False
) -> Iterator[str]:
    """The URL of an empty database (`migrated`: one at the schema's head): a SQLite
    file in `tmp_path`, or a database of the session's PostgreSQL, dropped at the end."""
    if backend == "sqlite":
        if migrated:
            migrated_sqlite(request, tmp_path / "hub.db")
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    assert backend == "postgresql", backend
    server: PostgresServer = request.getfixturevalue("postgres")
    template = request.getfixturevalue("postgres_template") if migrated else None
    name = server.create_database(template)
    try:
        yield server.admin_url(name)
    finally:
        server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database test runs on both backends."""
    with a_database(request, tmp_path, request.param) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """As `database_url`, the database already at the schema's head."""
    with a_database(request, tmp_path, request.param, migrated=True) as url:
        yield url


@pytest.fixture
def db(migrated_database_url: str) -> Iterator[Database]:
    """The hub's database on each backend, migrated, closed after."""
    database = Database(migrated_database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def site_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The database of a hub process (tests/rig/site.py): SQLite, unless a test
    chooses with `@pytest.mark.parametrize("site_database_url", ["sqlite",
    "postgresql"], indirect=True)` (its processes make each run slow: only the
    tests that matter most run on both)."""
    with a_database(request, tmp_path, getattr(request, "param", "sqlite")) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hub.db'}"


@pytest.fixture(autouse=True)
def node_accounts_removed() -> Iterator[None]:
    """The system users and groups the test's hubs made for nodes go, whatever the
    outcome (torn down after the test's own fixtures have stopped the hubs)."""
    from tests.rig.hub import CREATED

    try:
        yield
    finally:
        while CREATED:
            hub = CREATED.pop()
            hub.stop()
            hub.remove_accounts()
        while IN_PROCESS_GROUPS:
            remove_group(*IN_PROCESS_GROUPS.pop())


@pytest.fixture(autouse=True)
def no_leftover_qemu_nbd(tmp_path: Path) -> Iterator[None]:
    """Every qemu-nbd serving a file of this test must be gone when it ends."""
    yield
    left = wait_gone(pids_with(str(tmp_path)), timeout=5)
    kill_all(left)
    assert not left, f"qemu-nbd processes left behind: {left}"


@pytest.fixture
def bare_site(tmp_path: Path) -> Iterator[Site]:
    """A hub process and a node not enrolled yet; the node users the hub made and
    every ssh process of the test are gone after."""
    site = Site(tmp_path)
    try:
        site.start()
        yield site
    finally:
        site.stop()
    assert users_of(site.hub.tunnel_group) == []
    assert pids_with(str(tmp_path), name="ssh") == []


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


# Groups of the in-process hubs `make_settings` configured: (group, data dir).
IN_PROCESS_GROUPS: list[tuple[str, Path]] = []


def make_settings(
    tmp_path: Path, database_url: str, pool: int = 8, roots: list[Path] | None = None
) -> HubSettings:
    """A hub in `tmp_path/data`; repositories may be anywhere under `roots` (by
    default `tmp_path`, where `repo_dir` is)."""
    first, last = free_port_range(pool)
    group = unique_group()  # its node users and the group go when the test ends
    IN_PROCESS_GROUPS.append((group, tmp_path / "data"))
    return load_settings(
        HubSettings,
        data_dir=tmp_path / "data",
        database_url=database_url,
        nbd_port_min=first,
        nbd_port_max=last,
        min_free_bytes=0,
        repository_roots=roots or [tmp_path],
        tunnel_group=group,
    )


@pytest.fixture
def db_hub(tmp_path: Path, migrated_database_url: str) -> Iterator[Hub]:
    """A hub on each database backend in turn."""
    hub = Hub.open(make_settings(tmp_path, migrated_database_url))
    try:
        yield hub
    finally:
        hub.reconcile("test ended")
        hub.close()


@pytest.fixture
def hub(request: pytest.FixtureRequest, tmp_path: Path, sqlite_url: str) -> Iterator[Hub]:
    migrated_sqlite(request, tmp_path / "hub.db")
    hub = Hub.open(make_settings(tmp_path, sqlite_url))
    try:
        yield hub
    finally:
        hub.reconcile("test ended")
        hub.close()


@pytest.fixture
def token(hub: Hub) -> str:
    return hub.tokens.create("test")


@pytest.fixture
def api(hub: Hub, token: str) -> Iterator[TestClient]:
    with TestClient(create_app(hub), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write to, root included (a read-only tmpfs when root)."""
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
