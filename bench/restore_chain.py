"""A restore from the end of a long chain beside one from its start, same run.

    .venv/bin/python bench/restore_chain.py [--disk-gib 1] [--chain 30] [--runs 3]

A hub (its services in this process) holds one disk's chain: a full (half random
data, half holes in 16 MiB extents) and `--chain` incrementals, each after
another 1% of the data changed, written through the hub's own qemu-nbd exports
(bench/verify.py's `backup`). Timed, each after `sync; drop_caches` when root,
the two alternating: `DiskConverter.export` to raw of the 1st incremental and of
the last (each a read through its whole chain of QCOW2 overlays). The last
export is compared with the source (they must be identical). Writes
"restore_chain" and the top-level `restore_chain30_vs_chain1` (rate of the
last over rate of the first: 1.0 = a long chain costs nothing) to
bench/results.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbd_writer import make_source
from results import record
from verify import EXTENT, MiB, backup, bench_hub, change_one_percent, drop_caches

from sendense.hub.restore.conversion import DiskConverter

KEY = 2000


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.disk_gib * 1024) * MiB
    with tempfile.TemporaryDirectory(prefix="sendense-bench-chain-", dir=args.tmp) as tmp:
        root = Path(tmp)
        hub = bench_hub(root)
        try:
            source = root / "source.raw"
            data = make_source(source, size)
            full = {KEY: [(o, EXTENT) for o in range(0, size, 2 * EXTENT)]}
            backup(hub, "bench-chain", {KEY: source}, full, "full")
            points = []
            for _ in range(args.chain):
                changed = {KEY: change_one_percent(source, size)}
                points.append(backup(hub, "bench-chain", {KEY: source}, changed, "incremental"))
            exporter = DiskConverter(hub.db, hub.repos, hub.settings.scratch_dir)
            out = root / "out"
            out.mkdir()
            seconds: dict[str, list[float]] = {"first": [], "last": []}
            for run_ in range(args.runs):
                order = ("first", "last") if run_ % 2 == 0 else ("last", "first")
                for which in order:
                    point = points[0] if which == "first" else points[-1]
                    target = out / f"{which}.raw"
                    target.unlink(missing_ok=True)
                    drop_caches()
                    started = time.perf_counter()
                    exporter.export(point, KEY, "raw", target)
                    seconds[which].append(time.perf_counter() - started)
            compare = ["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw"]
            same = subprocess.run([*compare, str(source), str(out / "last.raw")], check=False)
            if same.returncode != 0:
                raise SystemExit("the export of the chain's last point differs from the source")
        finally:
            hub.close()
    first, last = statistics.median(seconds["first"]), statistics.median(seconds["last"])
    return {
        "virtual_bytes": size,
        "data_bytes": data,
        "chain": args.chain,
        "runs": args.runs,
        "first": {"seconds": seconds["first"], "median_s": first, "MBps": size / first / 1e6},
        "last": {"seconds": seconds["last"], "median_s": last, "MBps": size / last / 1e6},
        "restore_chain30_vs_chain1": first / last,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-gib", type=float, default=1.0)
    parser.add_argument("--chain", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    args = parser.parse_args()
    figures = run(args)
    print(f"{'raw export':<24}{'seconds':>10}{'MB/s':>10}")
    for which in ("first", "last"):
        f = figures[which]
        print(f"{which + ' incremental':<24}{f['median_s']:>10.2f}{f['MBps']:>10.0f}")
    ratio = figures["restore_chain30_vs_chain1"]
    print(f"restore_chain30_vs_chain1 {ratio:.3f}")
    record("restore_chain", figures, {"restore_chain30_vs_chain1": ratio})


if __name__ == "__main__":
    main()
