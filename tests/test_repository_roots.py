"""Repositories only under the hub's `repository_roots` (issue 12, point 11): an
admin token (or a bug) cannot make the hub write disk images over /etc or read a
directory anywhere on the hub."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sendense.common.config import load_settings
from sendense.common.errors import InvalidInput
from sendense.hub.api.app import create_app
from sendense.hub.config import HubSettings
from sendense.hub.repository.repositories import MARKER
from sendense.hub.service import Hub
from tests.conftest import make_settings


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "roots" / "main"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A writable directory the hub could use, but not under the root."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


@pytest.fixture
def rooted(tmp_path: Path, sqlite_url: str, root: Path) -> Iterator[tuple[Hub, TestClient]]:
    hub = Hub.open(make_settings(tmp_path, sqlite_url, roots=[root]))
    token = hub.tokens.create("admin")
    try:
        app = create_app(hub)
        with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
            yield hub, client
    finally:
        hub.close()


def refused(client: TestClient, path: str) -> str:
    response = client.post("/api/v1/repositories", json={"path": path})
    assert response.status_code == 422, response.text
    message: str = response.json()["message"]
    assert "not under a repository root" in message
    return message


def test_a_path_outside_the_roots_is_refused(
    rooted: tuple[Hub, TestClient], root: Path, outside: Path
) -> None:
    hub, client = rooted
    message = refused(client, str(outside))
    assert str(root) in message  # says where repositories may go
    refused(client, "/etc")
    # nothing said about what exists outside: the same answer for a missing path
    refused(client, "/etc/no-such-directory")
    assert not (outside / MARKER).exists()
    assert not Path("/etc", MARKER).exists()
    assert hub.repos.list() == []


def test_a_symlink_inside_a_root_to_outside_is_refused(
    rooted: tuple[Hub, TestClient], root: Path, outside: Path
) -> None:
    hub, client = rooted
    (root / "link").symlink_to(outside)
    refused(client, str(root / "link"))
    (root / "parent-link").symlink_to(outside.parent)
    refused(client, str(root / "parent-link" / "elsewhere"))
    assert not (outside / MARKER).exists()
    assert hub.repos.list() == []


def test_dot_dot_cannot_leave_a_root(
    rooted: tuple[Hub, TestClient], root: Path, outside: Path
) -> None:
    hub, client = rooted
    refused(client, f"{root}/../../elsewhere")
    refused(client, f"{root}/..")
    assert not (outside / MARKER).exists()
    assert hub.repos.list() == []


def test_a_directory_under_a_root_is_accepted(
    rooted: tuple[Hub, TestClient], root: Path, outside: Path
) -> None:
    hub, client = rooted
    (root / "a" / "b").mkdir(parents=True)
    added = client.post("/api/v1/repositories", json={"path": f"{root}/a/../a/b", "name": "r"})
    assert added.status_code == 201, added.text
    assert added.json()["path"] == str(root / "a" / "b")  # stored resolved
    # a symlink that stays inside a root is fine: what counts is where it leads
    (outside / "to-root").symlink_to(root)
    via_link = client.post("/api/v1/repositories", json={"path": str(outside / "to-root")})
    assert via_link.status_code == 201, via_link.text
    assert via_link.json()["path"] == str(root)
    assert [r.name for r in hub.repos.list()] == ["r", "main"]


def test_a_repository_registered_outside_the_roots_keeps_working_with_a_warning(
    tmp_path: Path, sqlite_url: str, outside: Path, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = Hub.open(make_settings(tmp_path, sqlite_url, roots=[outside]))
    try:
        before.repos.add(str(outside), "old")
    finally:
        before.close()
    hub = Hub.open(make_settings(tmp_path, sqlite_url, roots=[root]))
    try:
        with caplog.at_level(logging.WARNING):
            hub.reconcile()  # what `hub serve` does at every start
        assert f"repository old at {outside} is outside the repository roots" in caplog.text
        assert hub.repos.get("old").path == outside  # still usable
        with pytest.raises(InvalidInput, match="not under a repository root"):
            hub.repos.add(str(outside / "."), "again")
    finally:
        hub.close()


def test_roots_come_from_the_config_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nrepository_roots = ["/srv/a", "/srv/b"]\n')
    assert load_settings(HubSettings, config).repository_roots == [Path("/srv/a"), Path("/srv/b")]
    monkeypatch.setenv("SENDENSE_HUB_REPOSITORY_ROOTS", "/mnt/x:/mnt/y")
    assert load_settings(HubSettings, config).repository_roots == [Path("/mnt/x"), Path("/mnt/y")]
    monkeypatch.setenv("SENDENSE_HUB_REPOSITORY_ROOTS", "relative/dir")
    with pytest.raises(InvalidInput, match=r"repository_roots.*not an absolute path"):
        load_settings(HubSettings)
    monkeypatch.delenv("SENDENSE_HUB_REPOSITORY_ROOTS")
    default = load_settings(HubSettings, data_dir=tmp_path).repository_roots
    assert len(default) == 1
    assert default[0].name == "repositories"
    assert default[0].parent.name == "sendense"
