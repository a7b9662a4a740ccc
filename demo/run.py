"""`make demo`: the product's main job on an embedded default, start to finish.

A local vCenter simulator with the seed's VM `pgtest1` (disk 2000: 102 GiB, disk
2001: 5 GiB, mostly holes, a few hundred MiB of data), a hub, a node enrolled with
a pairing code, the tunnel between them, all on loopback. A full backup, a change
of guest data, an incremental, then both restore points verified against the
source as it was at each backup (`qemu-img compare`), and a summary. Everything
it starts is stopped and its files removed, whatever happens.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table
from tests.rig.cli import sendense
from tests.rig.site import Site
from tests.rig.vcsim import running_vcsim
from tests.rig.vmware_vms import SCSI0, create_vm, flat_file

from sendense.nbd.qemu_img import QemuImg

GiB, MiB = 1 << 30, 1 << 20
console = Console()


def guest_data(path: Path, extents: list[tuple[int, int]], seed: int) -> int:
    block = bytes((i * 7 + seed) % 251 for i in range(MiB))
    with path.open("r+b") as handle:
        for offset, size in extents:
            handle.seek(offset)
            for _ in range(size // MiB):
                handle.write(block)
    return sum(size for _, size in extents)


def keep_copy(source: Path, target: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)


def backup(site: Site, vm: str) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sendense", "backup", "run", vm, "--watch"],
        env=site.hub.env | site.cli_env(),
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"backup of {vm} failed (exit {done.returncode})")
    point: dict[str, Any] = site.api.get(f"/api/v1/restore-points?vm={vm}").json()[-1]
    point["wall_s"] = time.monotonic() - started
    return point


def summary(points: list[dict[str, Any]], verified: dict[tuple[str, int], bool]) -> Table:
    table = Table(title="pgtest1: restore points")
    for column in ("point", "disk", "type", "virtual", "sent", "s", "MB/s", "parent", "check"):
        table.add_column(column, no_wrap=True)
    for point in points:
        for disk in point["disks"]:
            table.add_row(
                point["id"][:6],
                str(disk["disk_key"]),
                disk["backup_type"][:4],
                f"{disk['virtual_size'] / GiB:.0f}G",
                f"{(disk['data_bytes'] or 0) / MiB:.0f}M",
                f"{disk['duration_s'] or 0:.1f}",
                f"{(disk['rate_bytes_per_s'] or 0) / 1e6:.0f}",
                (disk["parent_id"] or "-")[:6],
                "same" if verified[(point["id"], disk["disk_key"])] else "DIFFERS",
            )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sendense-demo-"))
    ok = False
    try:
        with running_vcsim(work / "vcsim") as vcsim, vcsim.session() as si:
            console.rule("vCenter simulator")
            vm = create_vm(
                si, "pgtest1", [(2000, 102 * GiB, SCSI0), (2001, 5 * GiB, SCSI0)], cbt=True
            )
            disks = {k: flat_file(vcsim, vm, k) for k in (2000, 2001)}
            data = guest_data(disks[2000], [(o * GiB, 16 * MiB) for o in range(0, 102, 4)], 1)
            data += guest_data(disks[2001], [(0, 64 * MiB), (4 * GiB, 32 * MiB)], 2)
            console.print(
                f"pgtest1 at {vcsim.host}: disks 2000 (102 GiB) and 2001 (5 GiB), "
                f"{data / MiB:.0f} MiB of guest data"
            )

            console.rule("hub, node, tunnel")
            # repositories may be made only under the hub's repository_roots
            site = Site(work / "site", repository_roots=work)
            try:
                site.start()
                site.enroll_and_connect()
                site.add_vcenter(vcsim)
                (work / "repo").mkdir()
                site.api.post("/api/v1/repositories", json={"path": str(work / "repo")})
                shown = sendense("nodes", "list", env=site.cli_env())
                console.print(shown.stdout)

                console.rule("full backup")
                at_full = {}
                for key, path in disks.items():
                    at_full[key] = work / f"source-full-{key}.raw"
                    keep_copy(path, at_full[key])
                full = backup(site, "pgtest1")

                console.rule("guest writes, then an incremental backup")
                changed = guest_data(disks[2000], [(7 * GiB, 4 * MiB), (50 * GiB, 8 * MiB)], 3)
                changed += guest_data(disks[2001], [(2 * GiB, 4 * MiB)], 4)
                console.print(f"{changed / MiB:.0f} MiB changed")
                at_inc = {}
                for key, path in disks.items():
                    at_inc[key] = work / f"source-inc-{key}.raw"
                    keep_copy(path, at_inc[key])
                inc = backup(site, "pgtest1")

                console.rule("verification")
                verified = {}
                for point, sources in ((full, at_full), (inc, at_inc)):
                    for disk in point["disks"]:
                        image = work / "repo" / disk["file_path"]
                        same = QemuImg().compare(sources[disk["disk_key"]], image, "raw", "qcow2")
                        verified[(point["id"], disk["disk_key"])] = same
                console.print(summary([full, inc], verified))
                for disk in inc["disks"]:
                    image = work / "repo" / disk["file_path"]
                    backing = QemuImg().info(image)["backing-filename"]
                    console.print(f"disk {disk['disk_key']}: {image.name} -> {backing}")
                console.print(f"full: {full['wall_s']:.1f}s, incremental: {inc['wall_s']:.1f}s")
                console.rule("sendense verify pgtest1 (checksums read back from each chain)")
                checked = sendense("verify", "pgtest1", env=site.cli_env())
                console.print(checked.stdout.rstrip() or checked.stderr.rstrip())
                ok = all(verified.values()) and checked.returncode == 0
            finally:
                site.stop()
    finally:
        if args.keep:
            console.print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    console.print("[bold green]demo passed[/]" if ok else "[bold red]demo FAILED[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
