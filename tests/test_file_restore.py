"""File-level restore through the product: a simulator VM's five disks are built
with the real tools (GPT with ext4 + XFS, MBR with NTFS + FAT + ext2, LVM with a
volume group over two disks, a LUKS volume, a BitLocker volume's signature, a
bare Btrfs disk), backed up through
hub, node and tunnel, changed (and one superblock corrupted), backed up again
(incremental); then each point is browsed and files taken out over the API and
the CLI. One site and two appliances serve the whole module: launching one
costs 10 to 40 s here (no KVM)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from sendense.hub.auth.roles import Role
from sendense.hub.files.appliance import SOCKDIR_RECORD, ApplianceFailed, ApplianceSettings
from sendense.hub.files.sessions import BrowseSettings, FileRestoreService
from tests.rig.browser import axe_violations, chromium, log_in, new_context
from tests.rig.cli import sendense
from tests.rig.guest_disks import (
    LUKS_KEY,
    SECTOR,
    MiB,
    Tree,
    appliance,
    big_file,
    bitlocker_signature,
    btrfs_image,
    copy_into,
    ext4_image,
    luks_image,
    materialise,
    partition,
    write_tree,
)
from tests.rig.hub import CREATED
from tests.rig.node_tasks import unique
from tests.rig.site import Site
from tests.rig.vcsim import Disconnect, Vcsim
from tests.rig.vmware_vms import SCSI0, SCSI1, create_vm, flat_file

# The first test waits for the module's site: guest disks made, three backups.
pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"), pytest.mark.timeout(900)]

DISKS = [
    (2000, 640 * MiB, SCSI0),  # GPT: ext4 (made by mke2fs -d), XFS
    (2001, 80 * MiB, SCSI0),  # MBR: NTFS, FAT, ext2
    (2002, 64 * MiB, SCSI0),  # GPT: an LVM physical volume, a LUKS volume, BitLocker
    (2003, 32 * MiB, SCSI1),  # a whole-disk physical volume: the group spans two disks
    (2004, 128 * MiB, SCSI1),  # a bare Btrfs filesystem (100,000 names), no partition table
]
ROOT_START = 2048  # sectors
ROOT_SIZE = 300 * MiB
EXT2_START = 2048 + 48 * 2048  # sectors: the MBR disk's third partition
LUKS_START = 2048 + 32 * 2048  # sectors: disk 2002's second partition
BITLOCKER_START = 2048 + 56 * 2048  # sectors: and its third
MANY = 100_000
BIG = 200 * MiB
PATCH_AT = 100 * MiB
SPARSE = 64 * MiB
IDLE_S = 3  # after the hub's restart in the last test; before it, the default
NOTE_1 = "première version\n".encode()
NOTE_2 = "deuxième version, plus longue\n".encode()

ROOT_1: Tree = {
    "/données": None,
    "/données/résumé-ü.txt": NOTE_1,
    "/données/sous-dossier": None,
    "/données/sous-dossier/a.txt": b"a" * 5000,
    "/données/lien": "->résumé-ü.txt",
    "/old.txt": b"removed before the second point\n",
    "/link": "->données/résumé-ü.txt",
    "/abs-link": "->/données/résumé-ü.txt",
    "/escape": "->../../../etc/os-release",
    "/appliance": "->/etc/os-release",
}
XFS_1: Tree = {"/docs": None, "/docs/readme.txt": b"xfs readme\n"}
NTFS_1: Tree = {"/Documents": None, "/Documents/Rapport été.txt": b"ntfs one\n"}
FAT_1: Tree = {"/BOOT": None, "/BOOT/CONFIG.TXT": b"fat config\n"}
EXT2_1: Tree = {"/etc": None, "/etc/hostname": b"guest\n"}
LV_1: Tree = {"/projects": None, "/projects/plan.txt": b"on two disks\n"}
BTRFS_1: Tree = {"/home": None, "/home/user": None, "/home/user/notes.md": b"# notes\n"}


@dataclass
class Point:
    id: str
    big: bytes
    root: Tree
    ntfs: Tree


@dataclass
class Browsed:
    site: Site
    root: Path
    vm: str
    points: list[Point] = field(default_factory=list)
    spare_point: str = ""
    backup_files: dict[Path, str] = field(default_factory=dict)  # before any browsing

    @property
    def api(self) -> httpx.Client:
        return self.site.api

    def open(self, point: Point | str, client: httpx.Client | None = None) -> dict[str, Any]:
        """The point's session, opened or joined (sessions close when idle)."""
        point_id = point if isinstance(point, str) else point.id
        opened = (client or self.api).post(f"/api/v1/restore-points/{point_id}/browse", timeout=900)
        assert opened.status_code == 201, opened.text
        answer: dict[str, Any] = opened.json()
        return answer

    def get(self, point: Point, what: str, **params: Any) -> httpx.Response:
        self.open(point)
        return self.api.get(
            f"/api/v1/restore-points/{point.id}/browse/{what}", params=params, timeout=300
        )


def _root_image(work: Path, label: str, tree: Tree, big: bytes) -> Path:
    """The ext4 root filesystem holding `tree`, the big file and a sparse file."""
    tree_dir = work / f"root-tree-{label}"
    materialise(tree | {"/big.bin": big}, tree_dir)
    with (tree_dir / "sparse.img").open("wb") as sparse:
        sparse.truncate(SPARSE)
        sparse.seek(SPARSE - 3)
        sparse.write(b"end")
    note = tree_dir / "données" / "résumé-ü.txt"
    os.chmod(note, 0o640)
    if label == "1":
        os.utime(note, (1_600_000_000, 1_600_000_000))
    image = work / f"root-{label}.ext4"
    ext4_image(tree_dir, image, ROOT_SIZE)
    return image


def _build(flats: list[Path], work: Path, big: bytes) -> None:
    image = _root_image(work, "1", ROOT_1, big)
    btrfs_dir = work / "btrfs-tree"
    materialise(BTRFS_1, btrfs_dir)
    many = btrfs_dir / "many"
    many.mkdir()
    for i in range(MANY):
        (many / f"f{i:06d}").touch()
    btrfs = work / "bare.btrfs"
    btrfs_image(btrfs_dir, btrfs)
    partition(flats[0], "gpt", [f"start={ROOT_START}, size={ROOT_SIZE // SECTOR}", ","])
    partition(flats[1], "dos", ["start=2048, size=49152, type=7", "size=49152, type=c", ","])
    luks_size = BITLOCKER_START - LUKS_START
    partition(flats[2], "gpt", ["start=2048, size=65536", f"size={luks_size}", ","])
    luks = work / "luks.img"
    luks_image(luks, luks_size * SECTOR, LUKS_KEY)
    with appliance(flats, work / "guestfs") as g:
        g.pvcreate("/dev/sdc1")
        g.pvcreate("/dev/sdd")
        g.vgcreate("vgdata", ["/dev/sdc1", "/dev/sdd"])
        g.lvcreate_free("data", "vgdata", 100)
        for device, fstype, tree in (
            ("/dev/sda2", "xfs", XFS_1),
            ("/dev/sdb1", "ntfs", NTFS_1),
            ("/dev/sdb2", "vfat", FAT_1),
            ("/dev/sdb3", "ext2", EXT2_1),
            ("/dev/vgdata/data", "ext4", LV_1),
        ):
            g.mkfs(fstype, device)
            g.mount(device, "/")
            write_tree(g, "/", tree)
            g.umount("/")
    copy_into(image, flats[0], ROOT_START * SECTOR)
    copy_into(btrfs, flats[4], 0)
    copy_into(luks, flats[2], LUKS_START * SECTOR)
    with flats[2].open("r+b") as disk:
        disk.seek(BITLOCKER_START * SECTOR)
        disk.write(bitlocker_signature())


def _change(flats: list[Path], work: Path, tree: Tree, big: bytes) -> None:
    """The second point's root filesystem, and a damaged ext2 superblock: its
    first fields go bad, its magic stays (still found as ext2; mounting fails)."""
    copy_into(_root_image(work, "2", tree, big), flats[0], ROOT_START * SECTOR)
    with flats[1].open("r+b") as disk:
        disk.seek(EXT2_START * SECTOR + 1024)
        disk.write(b"\xff" * 32)


def _backup(site: Site, vm: str) -> str:
    done = sendense("backup", "run", vm, "--watch", env=site.cli_env())
    assert done.returncode == 0, done.stdout + done.stderr
    points = site.api.get("/api/v1/restore-points", params={"vm": vm}).json()
    return str(points[-1]["id"])


def appliance_pids(root: Path) -> list[int]:
    """Processes (the appliances' qemu) working in this module's directories."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in argv and str(root).encode() in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def browsed(tmp_path_factory: pytest.TempPathFactory, vcsim: Vcsim) -> Iterator[Browsed]:
    root = tmp_path_factory.mktemp("files")
    site = Site(root, {"file_restore_appliances": "2"})
    try:
        site.start()
        CREATED.remove(site.hub)  # stopped here at the module's end, not after each test
        site.prepare(vcsim, root / "repo")
        si = vcsim.connect()
        try:
            name = unique("files")
            vm = create_vm(si, name, DISKS, cbt=True)
            flats = [flat_file(vcsim, vm, key) for key, _, _ in DISKS]
        finally:
            Disconnect(si)
        made = Browsed(site, root, name)
        big = big_file(16, BIG)
        _build(flats, root / "build", big)
        made.points.append(Point(_backup(site, name), big, ROOT_1, NTFS_1))
        patch = big_file(17, MiB)
        big_2 = big[:PATCH_AT] + patch + big[PATCH_AT + MiB :]
        root_2 = {k: v for k, v in ROOT_1.items() if k != "/old.txt"}
        root_2 |= {"/données/résumé-ü.txt": NOTE_2, "/nouveau.txt": b"new at the second point\n"}
        _change(flats, root / "build", root_2, big_2)
        made.points.append(Point(_backup(site, name), big_2, root_2, NTFS_1))
        second = site.api.get(f"/api/v1/restore-points/{made.points[1].id}").json()
        assert {d["backup_type"] for d in second["disks"]} == {"incremental"}
        made.spare_point = _backup(site, name)  # nothing changed: a third point
        made.backup_files = {p: sha(p.read_bytes()) for p in (root / "repo").rglob("*.qcow2")}
        yield made
    finally:
        site.stop()
        assert appliance_pids(root) == []


def names(listing: dict[str, Any]) -> set[str]:
    return {e["name"] for e in listing["entries"]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_each_point_shows_its_disks_filesystems_and_trees(browsed: Browsed) -> None:
    first, second = browsed.points
    with ThreadPoolExecutor(2) as pool:  # two appliances start at once
        opened, _ = pool.map(browsed.open, browsed.points)
    tables = {d["disk_key"]: d["partition_table"] for d in opened["disks"]}
    assert tables == {2000: "gpt", 2001: "msdos", 2002: "gpt", 2003: None, 2004: None}
    by_type = {f["type"]: f for f in opened["filesystems"]}
    types = {"ext4", "xfs", "ntfs", "vfat", "ext2", "btrfs", "crypto_LUKS", "BitLocker"}
    assert set(by_type) >= types
    for fstype, encrypted, device in (
        ("crypto_LUKS", "LUKS", "/dev/sdc2"),
        ("BitLocker", "BitLocker", "/dev/sdc3"),
    ):
        volume = by_type[fstype]
        assert (volume["encrypted"], volume["readable"]) == (encrypted, False), volume
        assert (volume["id"], volume["disk_key"]) == (device, 2002)
        assert "encrypted" in volume["error"]
    exts = [f for f in opened["filesystems"] if f["type"] == "ext4"]
    assert {f["id"] for f in exts} == {"/dev/sda1", "/dev/vgdata/data"}
    lv = next(f for f in exts if f["id"] == "/dev/vgdata/data")
    assert lv["disk_key"] is None
    assert lv["readable"]
    root = next(f for f in exts if f["id"] == "/dev/sda1")
    assert (root["label"], root["disk_key"]) == ("rootfs", 2000)
    assert root["size"] == ROOT_SIZE
    assert root["used"] > BIG
    assert by_type["btrfs"]["disk_key"] == 2004
    assert by_type["btrfs"]["id"] == "/dev/sde"

    expected = {
        ("/dev/sda2", "/docs"): {"readme.txt"},
        ("/dev/sdb1", "/Documents"): {"Rapport été.txt"},
        ("/dev/sdb2", "/BOOT"): {"CONFIG.TXT"},
        ("/dev/sdb3", "/etc"): {"hostname"},
        ("/dev/vgdata/data", "/projects"): {"plan.txt"},
        ("/dev/sde", "/home/user"): {"notes.md"},
    }
    for (fs, folder), wanted in expected.items():
        listed = browsed.get(first, "ls", fs=fs, path=folder)
        assert listed.status_code == 200, (fs, listed.text)
        assert names(listed.json()) == wanted, fs
    top = {"données", "old.txt", "link", "abs-link", "escape", "appliance", "big.bin"}
    first_root = browsed.get(first, "ls", fs="/dev/sda1", path="/").json()
    assert names(first_root) >= top | {"sparse.img", "lost+found"}
    second_root = browsed.get(second, "ls", fs="/dev/sda1", path="/").json()
    assert names(second_root) == (names(first_root) - {"old.txt"}) | {"nouveau.txt"}
    entry = next(e for e in first_root["entries"] if e["name"] == "link")
    assert (entry["type"], entry["target"]) == ("symlink", "données/résumé-ü.txt")
    note = browsed.get(first, "stat", fs="/dev/sda1", path="/données/résumé-ü.txt").json()
    assert (note["type"], note["size"], note["mode"]) == ("file", len(NOTE_1), "0640")
    assert note["mtime"].startswith("2020-09-13T12:26:40")

    # The second point's ext2 superblock is damaged: an error, not a hang.
    damaged = next(f for f in browsed.open(second)["filesystems"] if f["id"] == "/dev/sdb3")
    assert damaged["readable"] is False
    assert "mount" in damaged["error"]
    refused = browsed.get(second, "ls", fs="/dev/sdb3", path="/")
    assert refused.status_code == 422
    assert "cannot be read" in refused.json()["message"]
    assert browsed.get(first, "ls", fs="/dev/sdb3", path="/").status_code == 200


def test_downloads_are_the_bytes_of_their_point(browsed: Browsed, tmp_path: Path) -> None:
    first, second = browsed.points
    for point in browsed.points:
        big = browsed.get(point, "download", fs="/dev/sda1", path="/big.bin")
        assert big.status_code == 200
        assert int(big.headers["content-length"]) == BIG
        assert sha(big.content) == sha(point.big)
        note = browsed.get(point, "download", fs="/dev/sda1", path="/données/résumé-ü.txt")
        assert note.content == point.root["/données/résumé-ü.txt"]
        assert "r%C3%A9sum%C3%A9-%C3%BC.txt" in note.headers["content-disposition"]
        # A link downloads what it points to, inside the filesystem.
        for link in ("/link", "/abs-link", "/données/lien"):
            got = browsed.get(point, "download", fs="/dev/sda1", path=link)
            assert got.content == point.root["/données/résumé-ü.txt"], link
        ntfs = browsed.get(point, "download", fs="/dev/sdb1", path="/Documents/Rapport été.txt")
        assert ntfs.content == point.ntfs["/Documents/Rapport été.txt"]
        # The megabyte changed between the points, as each point had it.
        changed = browsed.api.get(
            f"/api/v1/restore-points/{point.id}/browse/download",
            params={"fs": "/dev/sda1", "path": "/big.bin"},
            headers={"Range": f"bytes={PATCH_AT - 10}-{PATCH_AT + MiB + 9}"},
        )
        assert changed.status_code == 206
        assert changed.content == point.big[PATCH_AT - 10 : PATCH_AT + MiB + 10]
    sparse = browsed.get(first, "download", fs="/dev/sda1", path="/sparse.img").content
    assert len(sparse) == SPARSE
    assert sparse == bytes(SPARSE - 3) + b"end"

    # One range of bytes: 206 and exactly those bytes; a range past the end: 416.
    browsed.open(second)
    url = f"/api/v1/restore-points/{second.id}/browse/download"
    params = {"fs": "/dev/sda1", "path": "/big.bin"}
    part = browsed.api.get(
        url, params=params, headers={"Range": f"bytes={PATCH_AT}-{PATCH_AT + 99}"}
    )
    assert part.status_code == 206, part.text
    assert part.content == second.big[PATCH_AT : PATCH_AT + 100]
    assert part.headers["content-range"] == f"bytes {PATCH_AT}-{PATCH_AT + 99}/{BIG}"
    tail = browsed.api.get(url, params=params, headers={"Range": "bytes=-10"})
    assert tail.content == second.big[-10:]
    past = browsed.api.get(url, params=params, headers={"Range": f"bytes={BIG}-"})
    assert past.status_code == 416

    # A folder as tar and as zip: the same tree, modes and times.
    for fmt in ("tar", "zip"):
        got = browsed.get(second, "download", fs="/dev/sda1", path="/données", format=fmt)
        assert got.status_code == 200, got.text
        out = tmp_path / fmt
        if fmt == "tar":
            with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
                tar.extractall(out)
        else:
            with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
                info = archive.getinfo("résumé-ü.txt")
                assert (info.external_attr >> 16) & 0o7777 == 0o640
                archive.extractall(out)
        extracted = out / "résumé-ü.txt"
        assert extracted.read_bytes() == NOTE_2
        assert (out / "sous-dossier" / "a.txt").read_bytes() == b"a" * 5000
        if fmt == "tar":
            assert (out / "lien").readlink() == Path("résumé-ü.txt")
            assert oct(extracted.stat().st_mode & 0o7777) == oct(0o640)
            assert int(extracted.stat().st_mtime) > 1_600_000_000  # rewritten at the second point


def test_paths_never_leave_the_filesystem(browsed: Browsed) -> None:
    first = browsed.points[0]
    for path in ("/../etc/passwd", "/données/../../x"):
        refused = browsed.get(first, "download", fs="/dev/sda1", path=path)
        assert refused.status_code == 422, (path, refused.text)
        assert "'..'" in refused.json()["message"]
    escape = browsed.get(first, "download", fs="/dev/sda1", path="/escape")
    assert escape.status_code == 422
    assert "outside" in escape.json()["message"]
    # An absolute target is the guest's: the appliance's own /etc/os-release is
    # not reached, and the guest has none.
    appliance = browsed.get(first, "download", fs="/dev/sda1", path="/appliance")
    assert appliance.status_code == 404, appliance.text
    missing = browsed.get(first, "ls", fs="/dev/sda1", path="/no/such/folder")
    assert missing.status_code == 404
    for what in ("ls", "find"):
        not_folder = browsed.get(first, what, fs="/dev/sda1", path="/old.txt", name="*")
        assert not_folder.status_code == 422, (what, not_folder.text)
        assert "not a folder" in not_folder.json()["message"]
    unknown = browsed.get(first, "ls", fs="/dev/sdz9", path="/")
    assert unknown.status_code == 404
    several = browsed.get(first, "ls", path="/")
    assert several.status_code == 422
    assert "/dev/sda1" in several.json()["message"]


def test_a_folder_of_100000_names_is_paged_and_names_are_found(browsed: Browsed) -> None:
    first = browsed.points[0]
    page = browsed.get(first, "ls", fs="/dev/sde", path="/many", offset=99_990, limit=50).json()
    assert page["total"] == MANY
    assert [e["name"] for e in page["entries"]] == [f"f{i:06d}" for i in range(99_990, MANY)]
    second_page = browsed.get(first, "ls", fs="/dev/sde", path="/many", offset=1000, limit=3)
    assert [e["name"] for e in second_page.json()["entries"]] == ["f001000", "f001001", "f001002"]
    found = browsed.get(first, "find", fs="/dev/sda1", path="/", name="*.txt").json()
    assert set(found["paths"]) == {
        "/old.txt",
        "/données/résumé-ü.txt",
        "/données/sous-dossier/a.txt",
    }
    capped = browsed.get(first, "find", fs="/dev/sde", path="/many", name="f0999*", limit=5)
    assert capped.json()["truncated"] is True
    assert len(capped.json()["paths"]) == 5


def test_the_cli_lists_and_gets_files_and_folders(browsed: Browsed, tmp_path: Path) -> None:
    second = browsed.points[1]
    env = browsed.site.cli_env()
    browsed.open(second)
    listed = sendense("restore", "files", second.id, "ls", "/données", "--fs", "/dev/sda1", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "résumé-ü.txt" in listed.stdout
    assert "lien -> résumé-ü.txt" in listed.stdout
    fs = sendense("restore", "files", second.id, "fs", env=env)
    assert fs.returncode == 0
    assert "crypto_LUKS" in fs.stdout
    assert "/dev/vgdata/data" in fs.stdout
    note = tmp_path / "note.txt"
    got = sendense(
        "restore", "files", second.id, "get", "/données/résumé-ü.txt",
        "--fs", "/dev/sda1", "--output", str(note), env=env,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert note.read_bytes() == NOTE_2
    tar = tmp_path / "projects.tar"
    folder = sendense(
        "restore", "files", second.id, "get", "/projects",
        "--fs", "/dev/vgdata/data", "--output", str(tar), env=env,
    )  # fmt: skip
    assert folder.returncode == 0, folder.stderr
    with tarfile.open(tar) as archive:
        assert archive.extractfile("./plan.txt").read() == b"on two disks\n"  # type: ignore[union-attr]
    missing = sendense(
        "restore", "files", second.id, "get", "/nope", "--fs", "/dev/sda1",
        "--output", str(tmp_path / "nope"), env=env,
    )  # fmt: skip
    assert missing.returncode == 3
    assert missing.stderr.count("\n") == 1
    assert "does not exist" in missing.stderr
    assert not (tmp_path / "nope").exists()


def test_roles_audit_limits_and_prune_while_browsing(browsed: Browsed) -> None:
    first, second = browsed.points
    api = browsed.api
    viewer = api.post("/api/v1/tokens", json={"name": unique("viewer"), "role": Role.VIEWER})
    with browsed.site.hub.client(viewer.json()["token"]) as as_viewer:
        refused = as_viewer.post(f"/api/v1/restore-points/{first.id}/browse")
        assert refused.status_code == 403
        denied = as_viewer.get(
            f"/api/v1/restore-points/{first.id}/browse/ls", params={"fs": "/dev/sda1"}
        )
        assert denied.status_code == 403
    operator = api.post("/api/v1/tokens", json={"name": unique("op"), "role": Role.OPERATOR})
    with browsed.site.hub.client(operator.json()["token"]) as as_operator:
        browsed.open(first, as_operator)
        got = as_operator.get(
            f"/api/v1/restore-points/{first.id}/browse/download",
            params={"fs": "/dev/sdb2", "path": "/BOOT/CONFIG.TXT"},
        )
        assert got.content == b"fat config\n"
    audit = api.get("/api/v1/audit", params={"limit": 50}).json()
    downloads = [a for a in audit if a["action"].endswith("/browse/download")]
    assert any(
        a["target"].get("path") == "/BOOT/CONFIG.TXT" and a["actor"] == operator.json()["name"]
        for a in downloads
    ), downloads[:3]

    # Two appliances run (both points): a third point waits for one.
    browsed.open(second)
    third = api.post(f"/api/v1/restore-points/{browsed.spare_point}/browse")
    assert third.status_code == 503
    assert "file_restore_appliances" in third.json()["message"]

    # Prune keeps a point being browsed.
    policy = unique("keep1")
    assert api.post("/api/v1/policies", json={"name": policy, "keep_last": 1}).status_code == 201
    plan = api.post("/api/v1/prune", json={"vm": browsed.vm, "policy": policy, "dry_run": True})
    reasons = {d["restore_point_id"]: (d["keep"], d["reason"]) for d in plan.json()["decisions"]}
    assert reasons[first.id] == (True, "in use"), reasons

    # Closed on request: its task complete, its point no longer browsed.
    session = browsed.open(first)
    closed = browsed.api.delete(f"/api/v1/restore-points/{first.id}/browse")
    assert closed.status_code == 200
    assert closed.json()["task_id"] == session["task_id"]
    task = browsed.api.get(f"/api/v1/tasks/{session['task_id']}").json()
    assert (task["kind"], task["state"]) == ("browse", "complete")
    again = browsed.api.get(
        f"/api/v1/restore-points/{first.id}/browse/ls", params={"fs": "/dev/sda1"}
    )
    assert again.status_code == 404
    assert "POST" in again.json()["message"]


def test_the_console_browses_a_point_and_downloads_a_file_and_a_folder(
    browsed: Browsed, tmp_path: Path
) -> None:
    """The VM page's file browser in Chromium, as an operator: the second point's
    filesystems, a folder entered, a file and the folder (zip) downloaded."""
    second = browsed.points[1]
    browsed.open(second)  # open already: the page joins the session
    name, password = unique("files-op"), "file browser test password 1"
    hub = browsed.site.hub_service()
    try:
        hub.users.create(name, Role.OPERATOR, password)
    finally:
        hub.db.dispose()
    with chromium() as browser:
        context = new_context(browser)
        try:
            page = context.new_page()
            refused: list[str] = []  # what the Content-Security-Policy blocked: nothing
            page.on(
                "console", lambda m: refused.append(m.text) if "Security Policy" in m.text else None
            )
            log_in(page, browsed.site.hub.url, name, password)
            expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
            page.goto(f"{browsed.site.hub.url}/vms/{browsed.vm}")
            point = page.locator(f"#point-{second.id}")
            point.get_by_role("button", name="Browse files").click()
            panel = point.get_by_role("region", name=f"Files of point {second.id}")
            filesystems = panel.get_by_role("table", name="Filesystems")
            expect(filesystems).to_contain_text("crypto_LUKS", timeout=120_000)
            luks = filesystems.locator("tr", has_text="crypto_LUKS")
            expect(luks).to_contain_text("encrypted")
            expect(luks.get_by_role("button")).to_have_count(0)
            expect(filesystems.locator("tr", has_text="/dev/sda1")).to_contain_text("rootfs")
            filesystems.get_by_role("button", name="/dev/sda1", exact=True).click()
            panel.get_by_role("button", name="données", exact=True).click()
            expect(panel.get_by_role("navigation")).to_contain_text("données")
            note_link = page.get_by_role("link", name="Download résumé-ü.txt", exact=True)
            expect(panel.locator("tr", has=note_link)).to_contain_text(f"{len(NOTE_2)} B")
            expect(panel.locator("tr", has_text="lien")).to_contain_text("→ résumé-ü.txt")
            with page.expect_download() as started:
                panel.get_by_role("link", name="Download résumé-ü.txt", exact=True).click()
            note = tmp_path / "note.txt"
            started.value.save_as(note)
            assert started.value.suggested_filename == "résumé-ü.txt"
            assert note.read_bytes() == NOTE_2
            with page.expect_download() as started:
                panel.get_by_role("link", name="Download as zip", exact=True).click()
            folder = tmp_path / "folder.zip"
            started.value.save_as(folder)
            with zipfile.ZipFile(folder) as archive:
                assert {"résumé-ü.txt", "sous-dossier/a.txt"} <= set(archive.namelist())
                assert archive.read("sous-dossier/a.txt") == b"a" * 5000
            # 100,000 names: shown a page at a time.
            filesystems.get_by_role("button", name="/dev/sde", exact=True).click()
            panel.get_by_role("button", name="many", exact=True).click()
            entries = panel.locator(".entries tbody tr")
            expect(entries).to_have_count(200, timeout=60_000)
            panel.get_by_role("button", name="Load more").click()
            expect(entries).to_have_count(400, timeout=60_000)
            expect(entries.nth(399)).to_contain_text("f000399")
            expect(panel.get_by_role("status")).to_contain_text(f"400 of {MANY}")
            assert axe_violations(page) == []
            assert refused == []
        finally:
            context.close()


def test_a_stalled_appliance_is_stopped_and_its_session_ends(
    browsed: Browsed, tmp_path: Path
) -> None:
    """The hub's sessions service in this process, over the same database and
    repository, with a 3-second watchdog: an appliance call that does not come
    back (the appliance is told to sleep) stops the appliance."""
    first = browsed.points[0]
    hub = browsed.site.hub_service()
    try:
        settings = BrowseSettings(tmp_path / "browse", 1, 3600, ApplianceSettings(call_timeout=3))
        service = FileRestoreService(hub.db, hub.repos, hub.tasks, hub.task_logs, settings)
        session = service.open(first.id, "test:watchdog")
        listed = session.ls("/dev/sdb2", "/BOOT")
        assert [e.name for e in listed.entries] == ["CONFIG.TXT"]
        with pytest.raises(ApplianceFailed, match="no progress"):
            session.appliance.call(session.appliance.handle().sleep, 600)
        assert service.expire_idle() == [first.id]
        task = hub.tasks.get(session.task_id)
        assert task.state == "failed"
        assert "no progress" in (task.error or "")
        assert appliance_pids(tmp_path) == []
    finally:
        hub.db.dispose()


def test_a_killed_hub_leaves_no_appliance_and_an_idle_session_closes_by_itself(
    browsed: Browsed,
) -> None:
    first, second = browsed.points
    task = browsed.open(second)["task_id"]
    assert appliance_pids(browsed.root) != []
    # libguestfs' socket directory, in /tmp, which only its close removes.
    record = browsed.root / "hub" / "scratch" / "browse" / task / SOCKDIR_RECORD
    sockdir = Path(record.read_text())
    assert sockdir.is_dir()
    browsed.site.hub.kill9()
    # libguestfs' recovery process stops the appliance when the hub dies.
    deadline = time.monotonic() + 30
    while appliance_pids(browsed.root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert appliance_pids(browsed.root) == []
    browsed.site.hub.env["SENDENSE_HUB_FILE_RESTORE_IDLE_S"] = str(IDLE_S)
    browsed.site.hub.start()
    ended = browsed.api.get(f"/api/v1/tasks/{task}").json()
    assert (ended["kind"], ended["state"]) == ("browse", "failed")
    assert "restarted" in ended["error"]
    assert browsed.api.get(f"/api/v1/restore-points/{second.id}/browse").status_code == 404
    assert not (browsed.root / "hub" / "scratch" / "browse" / task).exists()
    assert not sockdir.exists()  # the killed hub's, removed at start-up

    # Unused for IDLE_S, a session closes by itself, leaving nothing.
    idle = f"/api/v1/tasks/{browsed.open(first)['task_id']}"
    deadline = time.monotonic() + IDLE_S + 30
    while browsed.api.get(idle).json()["state"] == "running":
        assert time.monotonic() < deadline, "an idle session stayed open"
        time.sleep(0.5)
    assert browsed.api.get(idle).json()["state"] == "complete"
    deadline = time.monotonic() + 15
    while appliance_pids(browsed.root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert appliance_pids(browsed.root) == []
    # Browsing never wrote to the backup.
    repo = browsed.root / "repo"
    assert {p: sha(p.read_bytes()) for p in repo.rglob("*.qcow2")} == browsed.backup_files
