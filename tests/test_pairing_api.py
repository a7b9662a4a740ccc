"""A pairing code from the API (`POST /api/v1/nodes/pairing-codes`): an admin gets
one with the `sendense node enroll` line that `sendense hub pair` prints, a node
enrolls and connects by running that line, and an operator or a viewer is refused.
Real hub, sshd and node processes."""

from __future__ import annotations

import os
import shlex
from datetime import UTC, datetime

import pytest

from tests.rig.cli import sendense
from tests.rig.site import Site

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making system users needs root")


@pytest.fixture
def site(bare_site: Site) -> Site:
    return bare_site


def test_an_admin_pairs_a_node_through_the_api(site: Site) -> None:
    made = site.api.post("/api/v1/nodes/pairing-codes")
    assert made.status_code == 201, made.text
    body = made.json()
    code, command = body["code"], body["enroll_command"]
    expires = datetime.fromisoformat(body["expires_at"])
    assert datetime.now(UTC) < expires
    assert code not in command  # the node asks for it: never in argv
    argv = shlex.split(command)
    assert argv[:3] == ["sendense", "node", "enroll"]
    # The same line `sendense hub pair` prints (its own code aside), with the
    # listen address of the hub's settings, or the one given.
    pair = ["hub", "pair", "--data-dir", str(site.hub.data_dir)]
    env = {**site.hub.env, "SENDENSE_HUB_LISTEN_PORT": str(site.hub.port)}
    cli = sendense(*pair, env=env)
    assert cli.returncode == 0, cli.stderr
    assert command in cli.stderr
    told = sendense(*pair, "--address", "hub.example:8082", env=env)
    assert command.replace(f"127.0.0.1:{site.hub.port}", "hub.example:8082") in told.stderr

    node = site.node
    enrolled = sendense(
        *argv[1:],
        "--name",
        site.name,
        "--local-address",
        "127.0.0.2",
        "--data-dir",
        str(node.data_dir),
        env={**node.env, "SENDENSE_PAIRING_CODE": code},
    )
    assert enrolled.returncode == 0, enrolled.stderr
    # Both pins were right: the API's certificate (checked by the enrollment) and
    # the tunnel's host key (checked by ssh when the tunnel connects).
    node.start_serve()
    node.start_tunnel()
    node.wait_tunnel("connected")
    nodes = {n["name"]: n for n in site.api.get("/api/v1/nodes").json()}
    assert nodes[site.name]["revoked"] is False

    again = sendense(
        *argv[1:],
        "--name",
        "another",
        "--data-dir",
        str(node.data_dir.parent / "another"),
        env={**node.env, "SENDENSE_PAIRING_CODE": code},
    )
    assert again.returncode != 0  # single use
    assert "pairing code was used already" in again.stdout + again.stderr
    assert code not in site.hub.log.read_text()


def test_an_operator_or_a_viewer_gets_no_pairing_code(site: Site) -> None:
    for role in ("operator", "viewer"):
        made = site.api.post("/api/v1/tokens", json={"name": role, "role": role})
        assert made.status_code == 201, made.text
        with site.hub.client(made.json()["token"]) as client:
            refused = client.post("/api/v1/nodes/pairing-codes")
        assert refused.status_code == 403, (role, refused.text)
        assert "manage nodes" in refused.json()["message"]
