"""The vCenter simulator rig: a real vcsim process and pyVmomi, no mocks.

The server here uses a 1 MiB QueryChangedDiskAreas span so that small disks
already need several calls."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import SoapAdapter, vmodl
from pyVmomi import vim as pyvmomi_vim

from tests.rig.procs import pids_with, wait_gone
from tests.rig.vcsim import Disconnect, Vcsim, running_vcsim
from tests.rig.vmware_vms import (
    SCSI0,
    SCSI1,
    DiskSpec,
    MiB,
    change_id,
    changed_areas,
    create_snapshot,
    create_vm,
    destroy_vm,
    disk,
    fill,
    flat_file,
    journal_path,
    remove_snapshot,
    reset_cbt,
    set_cbt,
    virtual_disks,
    wait,
)

vim: Any = pyvmomi_vim  # untyped constructors: the boundary is Any
SoapStubAdapter: Any = SoapAdapter.SoapStubAdapter

BLOCK = 64 * 1024
SPAN = 1 * MiB
CHANGE_ID = re.compile(r"^52( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}/\d+$")
DISKS: list[DiskSpec] = [(2000, 4 * MiB, SCSI0), (2001, 2 * MiB, SCSI0), (2016, 3 * MiB, SCSI1)]


@pytest.fixture(scope="module")
def vc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    with running_vcsim(tmp_path_factory.mktemp("vcsim"), max_span=SPAN) as server:
        yield server


@pytest.fixture
def si(vc: Vcsim) -> Iterator[Any]:
    with vc.session() as session:
        yield session


@pytest.fixture
def make_vm(si: Any) -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def make(disks: list[DiskSpec] = DISKS, cbt: bool = True) -> Any:
        vm = create_vm(si, f"vm-{uuid.uuid4().hex[:8]}", disks, cbt=cbt)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        destroy_vm(si, vm)


def blocks(*ranges: tuple[int, int]) -> list[tuple[int, int]]:
    """The block-aligned areas covering (offset, length) ranges, merged."""
    touched = sorted(
        {b for off, n in ranges for b in range(off // BLOCK, (off + n - 1) // BLOCK + 1)}
    )
    areas: list[tuple[int, int]] = []
    for b in touched:
        if areas and areas[-1][0] + areas[-1][1] == b * BLOCK:
            areas[-1] = (areas[-1][0], areas[-1][1] + BLOCK)
        else:
            areas.append((b * BLOCK, BLOCK))
    return areas


def test_vm_disks_keep_their_keys_and_controllers(vc: Vcsim, si: Any, make_vm: Any) -> None:
    vm = make_vm()
    devices = {d.key: d for d in vm.config.hardware.device}
    assert devices[1000].busNumber == 0
    assert devices[1001].busNumber == 1
    assert isinstance(devices[1001], vim.vm.device.ParaVirtualSCSIController)
    found = {
        key: (d.controllerKey, d.unitNumber, d.capacityInBytes)
        for key, d in virtual_disks(vm.config).items()
    }
    assert found == {2000: (1000, 0, 4 * MiB), 2001: (1000, 1, 2 * MiB), 2016: (1001, 0, 3 * MiB)}
    assert all(devices[k].backing.thinProvisioned for k in found)
    assert vm.config.changeTrackingEnabled is True
    # The data files: as long as the disks, sparse, distinct.
    files = {key: flat_file(vc, vm, key) for key in found}
    assert len(set(files.values())) == 3
    for key, path in files.items():
        st = path.stat()
        assert st.st_size == found[key][2]
        assert st.st_blocks * 512 < st.st_size
        assert path.is_relative_to(vc.datastore_dir())


def test_unset_property_reads_as_none(make_vm: Any) -> None:
    vm = make_vm(cbt=False)
    assert vm.snapshot is None
    assert vm.rootSnapshot == []
    assert vm.config.changeTrackingEnabled is False


def test_snapshot_gives_each_tracked_disk_a_change_id(si: Any, make_vm: Any) -> None:
    vm = make_vm()
    assert disk(vm, 2000).backing.changeId is None
    first = create_snapshot(si, vm, "one", memory=False, quiesce=False)
    ids = {key: change_id(first, key) for key in (2000, 2001, 2016)}
    assert all(CHANGE_ID.match(i) for i in ids.values()), ids
    assert len({i.split("/")[0] for i in ids.values()}) == 3  # one epoch per disk
    assert {key: disk(vm, key).backing.changeId for key in ids} == ids

    second = create_snapshot(si, vm, "two", quiesce=True)
    for key, old in ids.items():
        new = change_id(second, key)
        epoch, seq = old.rsplit("/", 1)
        assert new == f"{epoch}/{int(seq) + 1}"
        assert change_id(first, key) == old  # the first snapshot keeps its own

    tree = vm.snapshot.rootSnapshotList
    assert [(t.name, t.quiesced) for t in tree] == [("one", False)]
    assert [(t.name, t.quiesced) for t in tree[0].childSnapshotList] == [("two", True)]
    assert vm.snapshot.currentSnapshot == second


def test_no_change_id_without_tracking(si: Any, make_vm: Any) -> None:
    vm = make_vm(cbt=False)
    snap = create_snapshot(si, vm, "plain")
    assert change_id(snap, 2000) == ""
    with pytest.raises(vmodl.fault.InvalidArgument):
        vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=2000, startOffset=0, changeId="*")


def test_star_covers_exactly_the_written_blocks_in_chunks(vc: Vcsim, si: Any, make_vm: Any) -> None:
    vm = make_vm()
    writes = [(0, b"boot" * 100), (BLOCK + 10, b"x"), (3 * MiB - 5, b"y" * (BLOCK + 10))]
    fill(flat_file(vc, vm, 2000), writes)
    fill(flat_file(vc, vm, 2016), [(2 * MiB, b"z" * 3 * BLOCK)])
    snap = create_snapshot(si, vm, "full")

    areas, calls = changed_areas(vm, snap, 2000, "*")
    assert areas == blocks(*((off, len(data)) for off, data in writes))
    assert calls == 4  # a 4 MiB disk, 1 MiB per answer

    areas, calls = changed_areas(vm, snap, 2016, "*")
    assert areas == [(2 * MiB, 3 * BLOCK)]
    assert calls == 3
    assert changed_areas(vm, snap, 2001, "*") == ([], 2)


def test_one_answer_covers_a_bounded_range_from_start_offset(
    vc: Vcsim, si: Any, make_vm: Any
) -> None:
    vm = make_vm()
    fill(flat_file(vc, vm, 2000), [(0, b"a" * 3 * BLOCK), (MiB + BLOCK, b"b")])
    snap = create_snapshot(si, vm, "s")
    start = BLOCK + 100
    info = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=2000, startOffset=start, changeId="*")
    assert info.startOffset == start
    assert info.length == SPAN - 100  # up to the next span boundary
    assert [(a.start, a.length) for a in info.changedArea] == [(start, 3 * BLOCK - start)]
    last = vm.QueryChangedDiskAreas(
        snapshot=snap, deviceKey=2000, startOffset=4 * MiB - BLOCK, changeId="*"
    )
    assert (last.startOffset, last.length, last.changedArea) == (4 * MiB - BLOCK, BLOCK, [])


def test_changes_since_a_change_id_are_exactly_the_changed_blocks(
    vc: Vcsim, si: Any, make_vm: Any
) -> None:
    vm = make_vm()
    path = flat_file(vc, vm, 2000)
    fill(path, [(0, b"a" * BLOCK), (2 * MiB, b"b" * 2 * BLOCK), (3 * MiB, b"c")])
    first = create_snapshot(si, vm, "base")
    base = change_id(first, 2000)

    fill(
        path,
        [
            (0, b"a" * BLOCK),  # rewritten with the same data: unchanged
            (2 * MiB + BLOCK + 7, b"B"),  # second block of the "b" run
            (3 * MiB, b"\0"),  # back to zeros: changed all the same
            (MiB - 1, b"dd"),  # straddles two blocks
        ],
    )
    second = create_snapshot(si, vm, "incr", quiesce=True)
    expected = blocks((2 * MiB + BLOCK, 1), (3 * MiB, 1), (MiB - 1, 2))
    assert changed_areas(vm, second, 2000, base)[0] == expected
    assert changed_areas(vm, second, 2000, change_id(second, 2000))[0] == []
    # Other disks: nothing written, nothing changed.
    assert changed_areas(vm, second, 2001, change_id(first, 2001))[0] == []
    # Answers describe the snapshot, not what the guest wrote afterwards.
    fill(path, [(4 * MiB - 1, b"late")])
    assert changed_areas(vm, second, 2000, base)[0] == expected
    assert changed_areas(vm, first, 2000, "*")[0] == blocks(
        (0, BLOCK), (2 * MiB, 2 * BLOCK), (3 * MiB, 1)
    )
    # Without a snapshot: the disk as it is now.
    now, _ = changed_areas(vm, None, 2000, base)
    assert now == blocks((2 * MiB + BLOCK, 1), (3 * MiB, 1), (MiB - 1, 2), (4 * MiB - 1, 1))


def _guest_write_unjournaled(path: Path, offset: int, data: bytes) -> None:
    """What anything but the rig's fill() does: the journal never hears of it."""
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def test_journaled_writes_are_exactly_the_changed_blocks(vc: Vcsim, si: Any, make_vm: Any) -> None:
    vm = make_vm()
    path = flat_file(vc, vm, 2000)
    fill(path, [(0, b"a" * BLOCK), (2 * MiB, b"b" * 2 * BLOCK)])
    base = change_id(create_snapshot(si, vm, "base"), 2000)
    journaled = [(BLOCK - 1, b"xy"), (2 * MiB + 10, b"B" * 3), (3 * MiB, b"c" * (BLOCK + 1))]
    fill(path, journaled)
    assert journal_path(path).exists()
    second = create_snapshot(si, vm, "incr")
    assert changed_areas(vm, second, 2000, base)[0] == blocks(
        *((off, len(data)) for off, data in journaled)
    )
    # No write since: the same blocks, and nothing new for the newer change ID.
    third = create_snapshot(si, vm, "again")
    assert changed_areas(vm, third, 2000, base)[0] == changed_areas(vm, second, 2000, base)[0]
    assert changed_areas(vm, third, 2000, change_id(second, 2000))[0] == []


def test_a_write_the_journal_does_not_hold_is_still_found(vc: Vcsim, si: Any, make_vm: Any) -> None:
    vm = make_vm()
    path = flat_file(vc, vm, 2000)
    fill(path, [(0, b"a" * BLOCK)])
    base = change_id(create_snapshot(si, vm, "base"), 2000)
    fill(path, [(MiB, b"journaled")])
    _guest_write_unjournaled(path, 3 * MiB, b"after")  # at once: the same clock tick, often
    expected = blocks((MiB, 9), (3 * MiB, 5))
    assert changed_areas(vm, create_snapshot(si, vm, "one"), 2000, base)[0] == expected

    # Unjournaled first, journaled after: the journal's chain has a gap.
    second = change_id(create_snapshot(si, vm, "two"), 2000)
    _guest_write_unjournaled(path, 2 * MiB, b"before")
    fill(path, [(BLOCK, b"journaled")])
    found = changed_areas(vm, create_snapshot(si, vm, "three"), 2000, second)[0]
    assert found == blocks((BLOCK, 9), (2 * MiB, 6))


def test_a_snapshot_trusts_the_journal_and_the_mtime(vc: Vcsim, si: Any, make_vm: Any) -> None:
    """Shows the journal is what a snapshot reads: a write hidden from both
    the journal and the file's mtime (no guest can do that) goes unseen."""
    vm = make_vm()
    path = flat_file(vc, vm, 2000)
    fill(path, [(0, b"a" * BLOCK)])
    base = change_id(create_snapshot(si, vm, "base"), 2000)
    fill(path, [(MiB, b"journaled")])
    st = path.stat()
    _guest_write_unjournaled(path, 3 * MiB, b"hidden")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert changed_areas(vm, create_snapshot(si, vm, "s"), 2000, base)[0] == blocks((MiB, 9))


def test_a_write_in_the_mtime_tick_of_a_snapshot_is_found(vc: Vcsim, si: Any, make_vm: Any) -> None:
    """A write in the clock tick the mtime already shows leaves the mtime as
    it is: a snapshot read within that tick is no base for the journal."""
    vm = make_vm()
    path = flat_file(vc, vm, 2000)
    tick = time.time_ns() + 10**10  # the clock will not reach it during the test
    _guest_write_unjournaled(path, 0, b"first")
    os.utime(path, ns=(tick, tick))
    base = change_id(create_snapshot(si, vm, "base"), 2000)
    _guest_write_unjournaled(path, MiB, b"second")
    os.utime(path, ns=(tick, tick))  # what the same tick would leave
    found = changed_areas(vm, create_snapshot(si, vm, "s"), 2000, base)[0]
    assert found == blocks((MiB, 6))


def test_an_answer_lists_a_bounded_number_of_areas(tmp_path: Path) -> None:
    with running_vcsim(tmp_path / "vc", max_areas=2) as server, server.session() as session:
        vm = create_vm(session, "areas", [(2000, 4 * MiB, SCSI0)], cbt=True)
        offsets = [0, BLOCK, 3 * BLOCK, MiB, 2 * MiB + 5, 4 * MiB - 1]
        fill(flat_file(server, vm, 2000), [(off, b"x") for off in offsets])
        snap = create_snapshot(session, vm, "s")
        info = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=2000, startOffset=0, changeId="*")
        assert [(a.start, a.length) for a in info.changedArea] == [
            (0, 2 * BLOCK),
            (3 * BLOCK, BLOCK),
        ]
        assert (info.startOffset, info.length) == (0, MiB)  # up to the next area
        areas, calls = changed_areas(vm, snap, 2000, "*")
        assert areas == blocks(*((off, 1) for off in offsets))
        assert calls == 3


def _fault_property(call: Callable[[], Any]) -> str:
    with pytest.raises(vmodl.fault.InvalidArgument) as raised:
        call()
    return str(raised.value.invalidProperty)


def test_unknown_or_foreign_change_ids_fault(si: Any, make_vm: Any) -> None:
    vm = make_vm()
    snap = create_snapshot(si, vm, "s")
    own = change_id(snap, 2000)
    epoch = own.rsplit("/", 1)[0]

    def query(key: int, cid: str, snapshot: Any = snap, start: int = 0) -> Callable[[], Any]:
        return lambda: vm.QueryChangedDiskAreas(
            snapshot=snapshot, deviceKey=key, startOffset=start, changeId=cid
        )

    assert _fault_property(query(2000, "garbage")) == "changeId"
    assert _fault_property(query(2000, f"{epoch}/99")) == "changeId"
    assert _fault_property(query(2000, change_id(snap, 2001))) == "changeId"  # another disk's
    assert _fault_property(query(2002, "*")) == "deviceKey"
    assert _fault_property(query(2000, "*", start=4 * MiB + 1)) == "startOffset"
    other = make_vm()
    foreign = create_snapshot(si, other, "elsewhere")
    assert _fault_property(query(2000, "*", snapshot=foreign)) == "snapshot"


def test_cbt_reset_voids_old_change_ids(vc: Vcsim, si: Any, make_vm: Any) -> None:
    vm = make_vm()
    fill(flat_file(vc, vm, 2000), [(0, b"data")])
    before = create_snapshot(si, vm, "before")
    old = change_id(before, 2000)

    set_cbt(si, vm, False)
    assert disk(vm, 2000).backing.changeId is None
    set_cbt(si, vm, True)
    after = create_snapshot(si, vm, "after")
    new = change_id(after, 2000)
    assert new.split("/")[0] != old.split("/")[0]  # a new epoch

    assert (
        _fault_property(
            lambda: vm.QueryChangedDiskAreas(
                snapshot=after, deviceKey=2000, startOffset=0, changeId=old
            )
        )
        == "changeId"
    )
    assert changed_areas(vm, after, 2000, "*")[0] == [(0, BLOCK)]

    reset_cbt(si, vm)
    assert (
        _fault_property(
            lambda: vm.QueryChangedDiskAreas(
                snapshot=after, deviceKey=2000, startOffset=0, changeId=new
            )
        )
        == "snapshot"
    )  # the snapshot's own change ID went with the reset too


def test_snapshots_remove_and_revert_through_wait_for_task(si: Any, make_vm: Any) -> None:
    vm = make_vm()
    one = create_snapshot(si, vm, "one")
    two = create_snapshot(si, vm, "two")
    task = one.RevertToSnapshot_Task()
    wait(si, task)
    assert task.info.entity == vm
    assert vm.snapshot.currentSnapshot == one

    task = two.RemoveSnapshot_Task(removeChildren=False)
    wait(si, task)
    assert task.info.state == "success"
    assert task.info.entity == vm
    assert [t.name for t in vm.snapshot.rootSnapshotList] == ["one"]
    assert vm.snapshot.rootSnapshotList[0].childSnapshotList == []
    remove_snapshot(si, one)
    assert vm.snapshot is None


def _folder_connection(vc: Vcsim) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(
        "127.0.0.1", vc.port, context=ssl._create_unverified_context(), timeout=10
    )


def test_range_get_over_folder_reads_the_disk(vc: Vcsim, si: Any, make_vm: Any) -> None:
    vm = make_vm()
    fill(flat_file(vc, vm, 2016), [(BLOCK - 3, b"hello world"), (3 * MiB - 4, b"tail")])
    name = disk(vm, 2016).backing.fileName.split("] ", 1)[1].replace(".vmdk", "-flat.vmdk", 1)
    url = f"/folder/{urllib.parse.quote(name)}?dcPath=DC0&dsName=LocalDS_0"
    cookie = si._stub.cookie.split(";", 1)[0]

    conn = _folder_connection(vc)
    try:
        conn.request("HEAD", url, headers={"Cookie": cookie})
        head = conn.getresponse()
        head.read()
        assert head.status == 200
        assert int(head.headers["Content-Length"]) == 3 * MiB
        sockets = {id(conn.sock)}
        for start, length, expected in [
            (BLOCK - 3, 11, b"hello world"),
            (3 * MiB - 8, 8, b"\0\0\0\0tail"),
            (0, 4, b"\0\0\0\0"),
        ]:
            end = start + length - 1
            conn.request("GET", url, headers={"Cookie": cookie, "Range": f"bytes={start}-{end}"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes {start}-{end}/{3 * MiB}"
            assert body == expected
            sockets.add(id(conn.sock))
        assert len(sockets) == 1  # one kept-alive connection served them all
    finally:
        conn.close()


def test_login_and_certificate(vc: Vcsim) -> None:
    # pyVim's SmartConnect leaks its socket when Login fails: use a stub we close.
    stub = SoapStubAdapter(
        host="127.0.0.1", port=vc.port, sslContext=ssl._create_unverified_context()
    )
    try:
        content: Any = vim.ServiceInstance("ServiceInstance", stub).RetrieveContent()
        with pytest.raises(vim.fault.InvalidLogin):
            content.sessionManager.Login(vc.username, vc.password + "x")
        content.sessionManager.Login(vc.username, vc.password)
        assert content.sessionManager.currentSession.userName == vc.username
    finally:
        stub.DropConnections()
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", vc.port)))
    assert vc.thumbprint == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert vc.host == f"127.0.0.1:{vc.port}"
    assert vc.url == f"https://{vc.host}/sdk"
    si = vc.connect()
    try:
        assert si.content.about.apiType == "VirtualCenter"
        assert [dc.name for dc in si.content.rootFolder.childEntity] == ["DC0"]
    finally:
        Disconnect(si)
    cmdline = Path(f"/proc/{vc.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{vc.pid}/environ").read_bytes()
    assert vc.password.encode() not in cmdline + environ
    assert not list(vc.datastore_root.glob(".vcsim-password-*"))


def test_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    server = Vcsim(tmp_path / "own", start_timeout=30)
    with server:
        pid = server.pid
        datastore = server.datastore_dir()
        assert datastore.is_dir()
        assert pids_with(str(tmp_path), name="vcsim") == [pid]
    assert wait_gone([pid], timeout=1) == []
    assert pids_with(str(tmp_path), name="vcsim") == []
    assert not datastore.exists()


def test_server_exits_when_its_stdin_closes(tmp_path: Path) -> None:
    """What a dying test process (even SIGKILLed) does to the server: its end
    of the server's stdin closes. The server must then stop and clean up."""
    server = Vcsim(tmp_path / "orphan").start()
    try:
        process = server.process
        assert process is not None
        assert process.stdin is not None
        datastore = server.datastore_dir()
        process.stdin.close()
        assert process.wait(5) == 0
        assert not datastore.exists()
    finally:
        server.stop()
    assert pids_with(str(tmp_path), name="vcsim") == []
