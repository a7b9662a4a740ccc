"""No secret in what the processes leave on disk (issue 13, "tests that prove it"):
after enrollment and a full and an incremental through hub, node and tunnel as
real processes, every file they wrote (logs, the database, the data
directories; not the token file the hub writes on purpose, mode 0600) is read
for the vCenter password, the API token, the node's API token, the pairing
code, a user's password and the session its login made. Before this, secrets
were checked only in log lines captured in-process.

Every process's command line (/proc/*/cmdline, readable by any local user) is
sampled during the enrollment, the backups and a restore to a new VM, and read
for the same secrets (issue 12, acceptance). The tasks' logs, the node's
lines in them, are among the files read.

Everything runs under umask 000: what the hub and node create (data directories,
the SQLite database, disk images, keys, logs of their children) must still be
theirs alone, 0600 files and 0700 directories (issue 12, point 12)."""

from __future__ import annotations

import os
import secrets as secrets_module
import stat
from pathlib import Path
from typing import Any

from tests.rig.cli import sendense
from tests.rig.cmdlines import CmdlineSampler
from tests.rig.node_tasks import unique
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, destroy_vm, fill, flat_file

ON_PURPOSE = "initial-api-token"  # the hub's and node's first token, shown once, 0600


def test_no_secret_in_any_file_the_hub_node_and_tunnel_write(
    tmp_path: Path, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    site = Site(tmp_path / "site", repository_roots=tmp_path)
    name = unique("secret")
    restored = f"{name}-restored"
    loose = os.umask(0)  # the processes inherit it
    try:
        with CmdlineSampler() as argv:
            site.start()
            code = site.enroll_and_connect()
            site.add_vcenter(vcsim)
            assert site.api.post("/api/v1/repositories", json={"path": str(repo_dir)}).is_success
            vm = create_vm(si, name, [(2000, 16 * MiB, SCSI0)], cbt=True)
            fill(flat_file(vcsim, vm, 2000), [(0, b"\x17" * MiB)])
            for _ in range(2):
                done = sendense("backup", "run", name, "--watch", env=site.cli_env())
                assert done.returncode == 0, done.stderr
                fill(flat_file(vcsim, vm, 2000), [(4 * MiB, b"\x29" * MiB)])
            # An operator logs in and restores with the session its login made.
            password = secrets_module.token_urlsafe(16)
            added = sendense(
                "user", "add", "ops", "--role", "operator", "--password-stdin",
                env=site.cli_env(), stdin=password + "\n",
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            with site.hub.client() as anonymous:
                login = anonymous.post(
                    "/api/v1/auth/login", json={"name": "ops", "password": password}
                )
            assert login.status_code == 200, login.text
            session = login.json()["token"]
            point = site.api.get("/api/v1/restore-points", params={"vm": name}).json()[0]
            done = sendense(
                "restore", "vm", point["id"], "--name", restored, "--watch",
                env=site.hub.cli_env(session),
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
        hub = site.hub_service()
        try:
            node_token = hub.nodes.api_token(site.name)
        finally:
            hub.db.dispose()
        secrets = {
            "vCenter password": vcsim.password,
            "API token": site.token,
            "node API token": node_token,
            "pairing code": code,
            "user password": password,
            "session": session,
        }
    finally:
        os.umask(loose)
        site.stop()
        copy = si.content.searchIndex.FindByInventoryPath(f"DC0/vm/{restored}")
        if copy is not None:
            destroy_vm(si, copy)

    # The sampler saw the processes that carry secrets: the CLI's enrollment and
    # restore, the node's ssh and the hub's sshd, qemu-nbd serving the backups.
    assert argv.rounds > 100
    for fragment in ("sendense node enroll", "sendense restore vm", "ssh -N", "sshd", "qemu-nbd"):
        assert argv.seen(fragment), fragment
    assert [(what, argv.containing(secret)) for what, secret in secrets.items()] == [
        (what, []) for what in secrets
    ]

    made_by_them = [
        site.hub.data_dir,
        site.node.data_dir,
        tmp_path / "site" / "hub.db",
        *repo_dir.iterdir(),
    ]
    open_to_others = [
        f"{oct(stat.S_IMODE(p.lstat().st_mode))} {p.relative_to(tmp_path)}"
        for top in made_by_them
        for p in [top, *(top.rglob("*") if top.is_dir() else [])]
        if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077
    ]
    assert any(p.suffix == ".qcow2" for p in repo_dir.rglob("*"))
    assert open_to_others == []

    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "hub.db" for p in files)
    assert any(p.suffix == ".log" for p in files)
    # The tasks' logs (issue 14, point 3), with the node's lines: read below too.
    task_logs = [p for p in files if p.parent == site.hub.data_dir / "task-logs"]
    assert len(task_logs) >= 3  # two backups and a restore
    assert any(" INFO node snapshot created " in p.read_text() for p in task_logs)
    found: list[str] = []
    seen_on_purpose: list[str] = []
    for path in files:
        if path.name == ON_PURPOSE:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            seen_on_purpose.append(path.read_text().strip())
            continue
        data = path.read_bytes()
        for what, secret in secrets.items():
            if secret.encode() in data:
                found.append(f"{what} in {path.relative_to(tmp_path)}")
    assert found == []
    assert site.token in seen_on_purpose  # the scan reads what it is meant to find
