"""Instant access: a restore point's disks over NBD with a throwaway overlay, read by
qemu-img and nbdinfo, written to without changing the backup, closed when idle,
and cleaned up by a hub restarted after kill -9."""

from __future__ import annotations

import filecmp
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from sendense.common.errors import NotFound
from sendense.hub.api.app import create_app
from sendense.hub.api.queries import Queries
from sendense.hub.backup.disks import DiskSpec
from sendense.hub.db.models import PointStatus, RestorePoint
from sendense.hub.repository.ports import port_is_bindable
from sendense.hub.service import Hub
from sendense.hub.verify.verifier import Verifier
from sendense.nbd.psk import PSK_FILE, client_object, write_psk
from tests.rig.cli import sendense
from tests.rig.hub import HubProcess
from tests.rig.nbd_data import pattern
from tests.rig.procs import pids_with, wait_gone
from tests.test_restore_export import SIZES, make_chain, repository_state

IDLE_S = 1.0


@pytest.fixture
def idle_api(hub: Hub, token: str) -> Iterator[TestClient]:
    """The API with a short idle time: its expiry loop checks every IDLE_S / 4."""
    hub.settings.access_idle_s = IDLE_S
    with TestClient(create_app(hub), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@dataclass(frozen=True)
class Key:
    """A client's copy of an access's pre-shared key, as qemu and libnbd read it."""

    directory: Path
    identity: str

    @property
    def file(self) -> Path:
        return self.directory / PSK_FILE

    def uri(self, uri: str) -> str:
        return f"{uri}?tls-psk-file={self.file}"

    def qemu(self) -> list[str]:
        return ["--object", client_object(self.directory, self.identity)]


def client_key(directory: Path, access: dict[str, Any], key: str | None = None) -> Key:
    write_psk(directory, access["psk_identity"], key or access["psk"])
    return Key(directory, access["psk_identity"])


def same_as(key: Key, image_opts: str, raw: Path) -> bool:
    """`qemu-img compare` of the export, opened with the key, and a raw file."""
    file_opts = f"driver=raw,file.driver=file,file.filename={raw}"
    result = run("qemu-img", "compare", "-q", *key.qemu(), "--image-opts", image_opts, file_opts)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def connect(uri: str) -> nbd.NBD:
    handle = nbd.NBD()
    handle.set_uri_allow_local_file(True)  # ?tls-psk-file=
    handle.connect_uri(uri)
    return handle


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def refused(*argv: str) -> bool:
    """The tool failed for want of TLS or of the right key, and read nothing."""
    result = run(*argv)
    said = (result.stdout + result.stderr).lower()
    return result.returncode != 0 and "tls" in said and "size" not in result.stdout


def test_instant_access_reads_as_the_point_takes_writes_elsewhere_and_expires(
    hub: Hub, idle_api: TestClient, repo_dir: Path, tmp_path: Path
) -> None:
    chain = make_chain(hub, repo_dir, tmp_path)
    before = repository_state(repo_dir)
    opened = idle_api.post(f"/api/v1/restore-points/{chain.top}/access")
    assert opened.status_code == 201, opened.text
    access = opened.json()
    assert access["restore_point_id"] == chain.top
    task = idle_api.get(f"/api/v1/tasks/{access['id']}").json()
    assert task["kind"] == "access"
    assert task["started_by"].startswith("token:")
    identity = f"access-{access['id']}"
    assert access["psk_identity"] == identity
    assert re.fullmatch(r"[0-9a-f]{64}", access["psk"])
    uris = {d["disk_key"]: d["uri"] for d in access["disks"]}
    opts = {d["disk_key"]: d["image_opts"] for d in access["disks"]}
    ports = [d["port"] for d in access["disks"]]
    assert sorted(uris) == [2000, 2001]
    assert uris[2000] == f"nbds://{identity}@127.0.0.1:{ports[0]}/{chain.top}-2000"
    assert opts[2000] == (
        f"driver=nbd,host=127.0.0.1,port={ports[0]},export={chain.top}-2000,tls-creds=tls0"
    )
    # The key is in the answer that opened the access only.
    shown = {k: v for k, v in access.items() if k != "psk"}
    assert idle_api.get("/api/v1/access").json() == [shown]
    assert idle_api.get(f"/api/v1/access/{access['id']}").json() == shown

    # On the hub: a 0700 directory, a 0600 file, never on a command line.
    served = hub.settings.access_keys_dir / access["id"]
    assert stat.S_IMODE(served.stat().st_mode) == 0o700
    assert stat.S_IMODE((served / PSK_FILE).stat().st_mode) == 0o600
    assert (served / PSK_FILE).read_text() == f"{identity}:{access['psk']}\n"
    servers = pids_with(str(hub.settings.scratch_dir))
    assert len(servers) == 2
    for pid in servers:
        assert access["psk"].encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()

    key = client_key(tmp_path / "key", access)
    # Held until the idle part below: between two tools no client is connected,
    # and a loaded machine can take longer than IDLE_S to start the next one.
    keeper = connect(key.uri(uris[2001]))
    for disk, uri in uris.items():
        expected = chain.expected[chain.top][disk]
        assert same_as(key, opts[disk], expected)
        info = json.loads(run("nbdinfo", "--json", key.uri(uri)).stdout)
        assert info["TLS"] is True
        assert info["exports"][0]["export-size"] == SIZES[disk]
        copied = tmp_path / f"copy-{disk}.raw"
        result = run("nbdcopy", key.uri(uri), str(copied))
        assert result.returncode == 0, result.stderr
        assert filecmp.cmp(copied, expected, shallow=False)
        result = run(
            "qemu-img", "convert", "-O", "raw", *key.qemu(), "--image-opts", opts[disk], str(copied)
        )
        assert result.returncode == 0, result.stderr
        assert filecmp.cmp(copied, expected, shallow=False)

    # Without the key, with a wrong one, or in plain NBD: every tool is refused.
    wrong = client_key(tmp_path / "wrong", access, key="00" * 32)
    plain = f"nbd://127.0.0.1:{ports[0]}/{chain.top}-2000"
    out = str(tmp_path / "stolen.raw")
    for argv in (
        ["nbdinfo", plain],
        ["nbdinfo", uris[2000]],  # nbds:// without a key file
        ["nbdinfo", wrong.uri(uris[2000])],
        ["nbdcopy", plain, out],
        ["nbdcopy", wrong.uri(uris[2000]), out],
        ["qemu-img", "info", plain],
        ["qemu-img", "info", *wrong.qemu(), "--image-opts", opts[2000]],
        ["qemu-img", "convert", "-O", "raw", plain, out],
    ):
        assert refused(*argv), argv
    handle = nbd.NBD()
    with pytest.raises(nbd.Error):
        handle.connect_uri(plain)

    # Writes land in the overlay: the export changes, the backup does not.
    write = ["qemu-io", *key.qemu(), "--image-opts", opts[2000]]
    wrote = run(*write, "-c", "write -P 0xab 0 1M")
    assert wrote.returncode == 0, wrote.stderr
    assert refused("qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 1M", plain)
    handle = connect(key.uri(uris[2001]))
    handle.pwrite(pattern(9, 65536), 0)
    handle.flush()
    handle.shutdown()
    assert not same_as(key, opts[2000], chain.expected[chain.top][2000])
    assert not same_as(key, opts[2001], chain.expected[chain.top][2001])
    assert run(*write, "-c", "read -P 0xab 0 1M").returncode == 0

    # A connected client keeps it open past the idle time...
    client = connect(key.uri(uris[2000]))
    keeper.shutdown()
    time.sleep(IDLE_S * 2.5)
    assert client.pread(4, 0) == b"\xab" * 4
    assert len(idle_api.get("/api/v1/access").json()) == 1
    # ...and once it is gone, the access closes by itself, its key with it.
    client.shutdown()
    wait_for(lambda: idle_api.get("/api/v1/access").json() == [])
    assert Queries(hub.db).job(access["id"]).state == "complete"
    assert hub.ports.status().used == 0
    assert all(port_is_bindable("127.0.0.1", p) for p in ports)
    assert pids_with(str(hub.settings.scratch_dir)) == []
    assert list(hub.settings.scratch_dir.iterdir()) == []
    assert list(hub.settings.access_keys_dir.iterdir()) == []

    assert repository_state(repo_dir) == before
    verifier = Verifier(hub.db, hub.repos, hub.settings.scratch_dir)
    assert all(v.valid for v in verifier.verify(chain.points))


def test_access_refuses_bad_input_and_closes_on_request(
    hub: Hub, api: TestClient, repo_dir: Path, tmp_path: Path
) -> None:
    chain = make_chain(hub, repo_dir, tmp_path)
    unfinished = hub.ledger.prepare("restore-vm", [DiskSpec(k, s) for k, s in SIZES.items()])
    before = repository_state(repo_dir)
    for point, status, code in (
        ("no-such-point", 404, "not_found"),
        (unfinished.restore_point_id, 409, "point_not_restorable"),
    ):
        response = api.post(f"/api/v1/restore-points/{point}/access")
        assert response.status_code == status, response.text
        assert response.json()["error"] == code
    assert api.delete("/api/v1/access/no-such-access").status_code == 404
    assert api.get("/api/v1/access/no-such-access").status_code == 404

    opened = api.post(f"/api/v1/restore-points/{chain.points[0]}/access").json()
    assert "psk" not in api.get(f"/api/v1/access/{opened['id']}").json()
    assert api.get(f"/api/v1/access/{opened['id']}").json() == {
        k: v for k, v in opened.items() if k != "psk"
    }
    assert (hub.settings.access_keys_dir / opened["id"]).is_dir()
    # Start-up drops the keys of accesses that are not open, and only those.
    stray = hub.settings.access_keys_dir / "closed-long-ago"
    write_psk(stray, "access-closed-long-ago", "11" * 32)
    assert hub.access.remove_stale_keys() == 1
    assert [d.name for d in hub.settings.access_keys_dir.iterdir()] == [opened["id"]]
    assert api.delete(f"/api/v1/access/{opened['id']}").status_code == 200
    assert api.delete(f"/api/v1/access/{opened['id']}").status_code == 404
    assert api.get("/api/v1/access").json() == []
    assert Queries(hub.db).job(opened["id"]).state == "complete"
    hub.access.close(opened["id"])  # closed already: nothing to do
    with pytest.raises(NotFound):
        hub.access.close(unfinished.job_id)  # a backup job is no access

    with hub.db.session() as s:
        s.execute(
            update(RestorePoint)
            .where(RestorePoint.id == chain.top)
            .values(status=PointStatus.INVALID)
        )
    refused = api.post(f"/api/v1/restore-points/{chain.top}/access")
    assert refused.status_code == 409
    assert refused.json()["error"] == "point_not_restorable"
    assert "invalid" in refused.json()["message"]
    assert hub.ports.status().used == 2  # only the unfinished backup's
    assert list(hub.settings.scratch_dir.iterdir()) == []
    assert list(hub.settings.access_keys_dir.iterdir()) == []
    assert repository_state(repo_dir) == before
    hub.ledger.fail(unfinished.job_id, "test: never meant to finish")


@pytest.fixture
def hub_process(hub: Hub, sqlite_url: str) -> Iterator[HubProcess]:
    served = HubProcess(hub.settings.data_dir, sqlite_url)
    try:
        yield served
    finally:
        served.stop()


def test_cli_then_kill_9_leaves_nothing_after_restart(
    hub: Hub, hub_process: HubProcess, repo_dir: Path, tmp_path: Path
) -> None:
    chain = make_chain(hub, repo_dir, tmp_path)
    before = repository_state(repo_dir)
    scratch = hub.settings.scratch_dir
    hub_process.start()
    token = hub_process.initial_token()
    env = {
        **os.environ,
        "COLUMNS": "200",
        **hub_process.cli_env(token),
    }

    env["HOME"] = str(tmp_path / "home")  # the CLI's default key directory lies there
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    bad = sendense("restore", "instant", chain.top, "--key-dir", str(not_a_dir), env=env)
    assert (bad.returncode, bad.stderr) == (2, f"error: --key-dir {not_a_dir} is not a directory\n")
    opened = sendense("restore", "instant", chain.top, env=env)
    assert opened.returncode == 0, opened.stderr
    lines = opened.stdout.splitlines()
    access_id = lines[0].split()[1]
    key_dir = tmp_path / "home/.local/share/sendense/access" / access_id
    identity = f"access-{access_id}"
    assert lines[1] == f"TLS pre-shared key (shown once), saved in {key_dir / PSK_FILE}:"
    assert lines[2].split() == ["identity", identity]
    psk = lines[3].split()[1]
    assert (key_dir / PSK_FILE).read_text() == f"{identity}:{psk}\n"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((key_dir / PSK_FILE).stat().st_mode) == 0o600
    uris = [line.split() for line in lines if line.split()[1].startswith("nbds://")]
    assert [disk for disk, _ in uris] == ["2000", "2001"]
    uri = uris[0][1]
    assert uri.startswith(f"nbds://{identity}@127.0.0.1:")
    assert uri.endswith(f"?tls-psk-file={key_dir / PSK_FILE}")
    # Every line the CLI gives works as it stands: nbdinfo's URI, qemu-img's command.
    info = json.loads(run("nbdinfo", "--json", uri).stdout)
    assert info["exports"][0]["export-size"] == SIZES[2000]
    commands = [line.split()[1:] for line in lines if "qemu-img info" in line]
    assert len(commands) == 2
    result = run(*commands[1][:2], "--output=json", *commands[1][2:])
    assert json.loads(result.stdout)["virtual-size"] == SIZES[2001], result.stderr

    listed = sendense("restore", "access-list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("access-") == 2  # one access: the refused one opened none
    assert access_id in listed.stdout
    assert uri.split("?")[0] in listed.stdout
    assert psk not in listed.stdout
    closed = sendense("restore", "close", access_id, env=env)
    assert (closed.returncode, closed.stdout.strip()) == (0, f"access {access_id} closed")
    assert not key_dir.exists()
    assert run("nbdinfo", uri).returncode != 0  # served no more
    again = sendense("restore", "close", access_id, env=env)
    assert again.returncode == 3
    assert again.stderr == f"error: no open access {access_id}\n"
    assert pids_with(str(scratch)) == []
    logs = [hub_process.log, *(hub.settings.log_dir.iterdir())]
    assert all(psk not in path.read_text() for path in logs)

    with hub_process.client(token, timeout=5) as client:
        access = client.post(f"/api/v1/restore-points/{chain.top}/access").json()
        servers = pids_with(str(scratch))
        assert len(servers) == 2
        assert (hub.settings.access_keys_dir / access["id"] / PSK_FILE).exists()
        hub_process.kill9()
        assert wait_gone(servers, timeout=0.5) == servers  # the crash left them running

        hub_process.start()
        assert wait_gone(servers, timeout=10) == []
        assert client.get("/api/v1/access").json() == []
        assert client.get("/api/v1/ports").json()["used"] == 0
        assert all(port_is_bindable("127.0.0.1", d["port"]) for d in access["disks"])
        job = client.get(f"/api/v1/jobs/{access['id']}").json()
        assert job["state"] == "failed"
    assert list(scratch.iterdir()) == []
    assert list(hub.settings.access_keys_dir.iterdir()) == []  # a closed access's key
    assert repository_state(repo_dir) == before


def test_an_access_still_opening_is_not_closed_as_idle(
    hub: Hub, repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle sweep (every few seconds in the app) runs while an access opens
    (its qemu-nbd can take seconds to listen on a loaded host): it must not stop
    that qemu-nbd, nor close the access before its idle time has even begun."""
    chain = make_chain(hub, repo_dir, tmp_path)
    start = hub.exports.start
    swept: list[list[str]] = []

    def sweep_then_start(*args: Any, **kwargs: Any) -> Any:
        swept.append(hub.access.expire_idle(0))
        return start(*args, **kwargs)

    monkeypatch.setattr(hub.exports, "start", sweep_then_start)
    access = hub.access.open(chain.top)
    assert swept
    assert all(not closed for closed in swept)
    assert hub.access.get(access.id).disks
    monkeypatch.setattr(hub.exports, "start", start)
    assert hub.access.expire_idle(0) == [access.id]  # open, it does go idle
