"""Rotating a vCenter's password: `sendense vcenter passwd` stores the new login
sealed, and the hub's next call to the vCenter (here: listing its VMs through the
node) uses it. An operator whose vCenter password expires changes it in place,
without removing the vCenter and the backups registered under it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.cli import sendense
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path)
    try:
        site.start()
        site.enroll_and_connect()
        yield site
    finally:
        site.stop()


def test_a_changed_vcenter_password_is_used_from_then_on(
    site: Site, vcsim: Vcsim, tmp_path: Path
) -> None:
    env = site.cli_env() | {"SENDENSE_VCENTER_PASSWORD": "expired-" + vcsim.password[:6]}
    added = sendense(
        "vcenter", "add", vcsim.host, "--user", vcsim.username, "--node", site.name,
        "--thumbprint", vcsim.thumbprint, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    refused = sendense("vms", "list", env=site.cli_env())
    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1, refused.stderr

    # The new password from a file (or the environment), never an argument.
    secret = tmp_path / "vcenter-password"
    secret.write_text(vcsim.password + "\n")
    changed = sendense(
        "vcenter", "passwd", vcsim.host, "--password-file", str(secret), env=site.cli_env()
    )
    assert changed.returncode == 0, changed.stderr
    assert vcsim.username in changed.stdout
    listed = sendense("vms", "list", env=site.cli_env())
    assert listed.returncode == 0, listed.stderr
    assert "VMs of the registered vCenter" in listed.stdout

    unknown = sendense(
        "vcenter", "passwd", "nowhere.example:443", "--password-file", str(secret),
        env=site.cli_env(),
    )  # fmt: skip
    assert (unknown.returncode, unknown.stderr.count("\n")) == (3, 1), unknown.stderr
    assert "nowhere.example:443" in unknown.stderr

    audit = site.api.get("/api/v1/audit").json()
    rows = [a for a in audit if a["action"].endswith("/vcenters/{host}/login")]
    assert [(a["outcome"], a["status"]) for a in rows[:2]] == [
        ("failed", 404),
        ("success", 200),
    ]
    hub_db = (tmp_path / "hub.db").read_bytes()
    assert vcsim.password.encode() not in hub_db
