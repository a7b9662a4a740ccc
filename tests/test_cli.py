"""The `sendense` command against a real hub process: tables, exit codes, one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.rig.cli import sendense
from tests.rig.hub import HubProcess
from tests.rig.net import free_port


@pytest.fixture
def running_hub(tmp_path: Path, sqlite_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(tmp_path / "data", sqlite_url)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


def test_repo_add_list_ports_status(running_hub: HubProcess, repo_dir: Path) -> None:
    env = running_hub.cli_env(running_hub.initial_token())
    added = sendense("repo", "add", str(repo_dir), "--name", "main", env=env)
    assert added.returncode == 0, added.stderr
    assert "main" in added.stdout
    listed = sendense("repo", "list", env=env)
    assert listed.returncode == 0
    assert str(repo_dir) in listed.stdout
    ports = sendense("ports", env=env)
    assert ports.returncode == 0
    assert "0 used, 8 free of 8" in ports.stdout
    status = sendense("hub", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert "ok" in status.stdout
    assert "main" in status.stdout


def test_errors_are_one_line_with_an_exit_code(running_hub: HubProcess, tmp_path: Path) -> None:
    env = running_hub.cli_env(running_hub.initial_token())
    missing = sendense("repo", "add", str(tmp_path / "missing"), env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert str(tmp_path / "missing") in missing.stderr
    assert "Traceback" not in missing.stderr

    wrong = sendense("repo", "list", env={**env, "SENDENSE_TOKEN": "nope"})
    assert wrong.returncode == 5
    assert wrong.stderr.startswith("error: ")
    assert "token" in wrong.stderr

    nobody = f"http://127.0.0.1:{free_port()}"
    down = sendense("ports", env={**env, "SENDENSE_HUB_URL": nobody})
    assert down.returncode == 9
    assert nobody in down.stderr
    assert down.stderr.strip().count("\n") == 0


def test_serve_refuses_bad_arguments_in_one_line(tmp_path: Path) -> None:
    bad = sendense("hub", "serve", "--data-dir", str(tmp_path), "--listen", "nonsense")
    assert bad.returncode == 2
    assert "--listen" in bad.stderr
    assert "Traceback" not in bad.stderr
    config = tmp_path / "hub.toml"
    config.write_text("[hub]\nnbd_port_min = 5\nnbd_port_max = 1\n")
    bad_config = sendense("hub", "serve", "--config", str(config))
    assert bad_config.returncode == 2
    assert "nbd_port_min" in bad_config.stderr
    assert "Traceback" not in bad_config.stderr


def test_token_command_mints_a_working_token(running_hub: HubProcess, repo_dir: Path) -> None:
    minted = sendense(
        "hub",
        "token",
        "--name",
        "ops",
        "--data-dir",
        str(running_hub.data_dir),
        env={"SENDENSE_HUB_DATABASE_URL": running_hub.env["SENDENSE_HUB_DATABASE_URL"]},
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    listed = sendense("repo", "list", env=running_hub.cli_env(token))
    assert listed.returncode == 0
    viewer = sendense(
        "hub",
        "token",
        "--name",
        "eyes",
        "--role",
        "viewer",
        "--data-dir",
        str(running_hub.data_dir),
        env={"SENDENSE_HUB_DATABASE_URL": running_hub.env["SENDENSE_HUB_DATABASE_URL"]},
    )
    assert viewer.returncode == 0, viewer.stderr
    as_viewer = running_hub.cli_env(viewer.stdout.strip())
    assert sendense("repo", "add", str(repo_dir), env=as_viewer).returncode == 11


def test_a_second_hub_on_the_same_data_directory_is_refused(running_hub: HubProcess) -> None:
    again = sendense(
        "hub",
        "serve",
        "--data-dir",
        str(running_hub.data_dir),
        "--listen",
        f"127.0.0.1:{free_port()}",
        env=running_hub.env,
    )
    assert again.returncode == 4
    assert str(running_hub.data_dir) in again.stderr
    assert (
        httpx.get(f"{running_hub.url}/api/v1/health", verify=running_hub.verify).status_code == 200
    )


def test_token_create_list_revoke_and_audit(running_hub: HubProcess, repo_dir: Path) -> None:
    initial = running_hub.initial_token()
    env = running_hub.cli_env(initial)
    made = sendense(
        "token", "create", "--name", "eyes", "--role", "viewer", "--expires-in", "30d", env=env
    )
    assert made.returncode == 0, made.stderr
    viewer = made.stdout.strip()
    assert viewer.startswith("sdh_")
    assert "\n" not in viewer
    assert "viewer" in made.stderr
    assert viewer not in made.stderr
    as_viewer = {**env, "SENDENSE_TOKEN": viewer}
    assert sendense("repo", "list", env=as_viewer).returncode == 0
    refused = sendense("repo", "add", str(repo_dir), env=as_viewer)
    assert refused.returncode == 11
    assert refused.stderr.startswith("error: ")
    assert refused.stderr.strip().count("\n") == 0
    assert "viewer" in refused.stderr
    listed = sendense("token", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "eyes" in listed.stdout
    assert viewer not in listed.stdout
    bad = sendense(
        "token", "create", "--name", "x", "--role", "viewer", "--expires-in", "soon", env=env
    )
    assert bad.returncode == 2
    assert "--expires-in" in bad.stderr
    # the initial token is revocable once another admin token exists
    ids = {
        t["name"]: t["id"]
        for t in httpx.get(
            f"{running_hub.url}/api/v1/tokens",
            headers={"Authorization": f"Bearer {initial}"},
            verify=running_hub.verify,
        ).json()
    }
    last = sendense("token", "revoke", ids["admin"], env=env)
    assert last.returncode == 4
    assert "last active admin token" in last.stderr
    second = sendense("token", "create", "--name", "boss", "--role", "admin", env=env)
    assert second.returncode == 0, second.stderr
    assert sendense("token", "revoke", ids["admin"], env=env).returncode == 0
    gone = sendense("repo", "list", env=env)
    assert gone.returncode == 5
    assert "revoked" in gone.stderr
    audit = sendense("audit", env={**env, "SENDENSE_TOKEN": second.stdout.strip()})
    assert audit.returncode == 0, audit.stderr
    assert "/api/v1/tokens/{token_id}" in audit.stdout
    assert "forbidden" in audit.stdout
