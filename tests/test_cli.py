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
