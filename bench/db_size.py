"""The hub's database at size (issue 18, item 8): SQLite and PostgreSQL in the same run.

    .venv/bin/python bench/db_size.py [--vms 1000] [--points 100000] [--log-lines 1000000]
                                      [--runs 5] [--stale 4]

Two hubs (their services in this process) open, one on a SQLite file in a temporary
directory, one on a private PostgreSQL (tests/rig/postgres.py: its own data
directory, fsync off, stopped by PID in every outcome); each makes its schema with
the hub's migrations. Both get the same synthetic rows (bench/db_size_rows.py):
`--vms` VMs of two disks, `--points` restore points (one a day per VM, reaching
past the 60 days tasks are kept; chains of a full and 13 incrementals), their
completed backup tasks with their schedule runs, failed backups, verifications and
prunes; 7 VMs in 10 have one of two policies. `--log-lines` task log lines are
spread over the finished tasks' log files (task logs are files, not rows).
PostgreSQL's tables are then vacuumed and analysed (what autovacuum has done on a
live hub); SQLite is left as the hub leaves it (it never runs ANALYZE).

Timed through the hub's own code, on each database, `--runs` times (median; the
millisecond figures after one warm-up call):

* `list_points_ms`: a VM's restore points as `GET /api/v1/restore-points?vm=<name>`
  reads them (`Queries.restore_points`, with each disk's place in its chain), a
  different VM each run;
* `dashboard_ms`: the console dashboard's queries (`console.overview.overview`);
* `task_log_ms`: a task's log as `GET /api/v1/tasks/<id>/log` reads it
  (`TaskCatalog.get`, then `TaskLogs.read`), a different task each run;
* `prune_plan_all_s`: `PruneService.plan` of every VM with its policy's rules (a VM
  of no policy with none: everything kept, after the same queries); plans only,
  nothing removed;
* `reconcile_s`: the start-up reconcile (`Hub.reconcile`) after a crash during
  `--stale` backups (running tasks locking their VMs, an incomplete point and two
  NBD ports each), made again before each run;
* `housekeeping_s`: the start-up housekeeping (`Hub.housekeeping`: tasks past
  `task_retention_days`, none here, orphaned logs, the daily usage sample).

Writes "db_size" (sizes, fill times, every run) and, at top level, `db_<figure>`
for SQLite (the hub's default) and `db_<figure>_postgresql`: absolute figures (no
other hub to run beside), `_ms` in milliseconds, `_s` in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db_size_rows import (
    PATTERNS,
    POLICIES,
    Fill,
    Shape,
    chunks,
    crash_leftovers,
    insert_rows,
    write_logs,
)
from results import record
from sqlalchemy import text
from tests.rig.postgres import PostgresServer

from sendense.common.config import load_settings
from sendense.hub.api.queries import Queries
from sendense.hub.config import HubSettings
from sendense.hub.console.overview import overview
from sendense.hub.retention.policies import matching_policy
from sendense.hub.retention.rules import KeepRules
from sendense.hub.service import Hub

DATABASES = ("sqlite", "postgresql")
FIGURES = (
    "list_points_ms",
    "dashboard_ms",
    "task_log_ms",
    "prune_plan_all_s",
    "reconcile_s",
    "housekeeping_s",
)


def open_hub(root: Path, url: str) -> tuple[Hub, str]:
    """A hub on `url` with its data directory and one repository under `root`."""
    (root / "repo").mkdir(parents=True)
    hub = Hub.open(
        load_settings(
            HubSettings,
            data_dir=root / "hub",
            database_url=url,
            repository_roots=[root],
            min_free_bytes=0,
        )
    )
    for name, (rules, chain, schedule) in POLICIES.items():
        hub.policies.create(name, rules, chain, schedule)
    return hub, hub.repos.add(str(root / "repo")).id


def fill(hub: Hub, repo_id: str, shape: Shape) -> tuple[Fill, float]:
    made = Fill()
    started = time.perf_counter()
    for rows in chunks(shape, hub.db.owner or "", repo_id, made):
        insert_rows(hub.db, rows, made.rows)
    for name, pattern in PATTERNS.items():
        hub.policies.assign(name, "pattern", pattern)
        hub.policies.mark_run(name, shape.now)
    if hub.db.engine.dialect.name == "postgresql":
        with hub.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    return made, time.perf_counter() - started


def timed(
    call: Callable[[int], object], runs: int, before: Callable[[], object] | None = None
) -> list[float]:
    """Seconds of each of `runs` calls; `before` runs untimed before each."""
    seconds = []
    for n in range(runs):
        if before is not None:
            before()
        started = time.perf_counter()
        call(n)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(hub: Hub, repo_id: str, made: Fill, args: argparse.Namespace) -> dict[str, Any]:
    queries = Queries(hub.db)
    vms = list(zip(made.vm_ids, made.vm_names, strict=True))
    per_vm = made.rows["restore_points"] // len(vms)
    planned: list[int] = []

    def list_points(n: int) -> None:
        points = queries.restore_points(vms[n * 97 % len(vms)][1])
        assert len(points) >= per_vm, len(points)

    def task_log(n: int) -> None:
        task = made.finished[n * 7919 % len(made.finished)]
        hub.tasks.get(task)
        assert hub.task_logs.read(task, 0, 1000)

    def prune_plan_all(_n: int) -> None:
        policies = hub.policies.list()
        removed = 0
        for vm_id, name in vms:
            policy = matching_policy(policies, name)
            decisions = hub.prune.plan(vm_id, policy.rules if policy else KeepRules())
            removed += sum(not d.keep for d in decisions)
        planned.append(removed)

    def reconcile(_n: int) -> None:
        report = hub.reconcile("bench: the hub restarted")
        assert report.failed_jobs == args.stale, report

    def leftovers() -> None:
        crash_leftovers(hub.db, repo_id, made, args.stale)

    for warm_up in (list_points, lambda _n: overview(hub), task_log):  # the short ones
        warm_up(-1)
    seconds = {
        "list_points_ms": timed(list_points, args.runs),
        "dashboard_ms": timed(lambda _n: overview(hub), args.runs),
        "task_log_ms": timed(task_log, args.runs),
        "prune_plan_all_s": timed(prune_plan_all, args.runs),
        "reconcile_s": timed(reconcile, args.runs, leftovers),
        "housekeeping_s": timed(lambda _n: hub.housekeeping(), args.runs),
    }
    figures: dict[str, Any] = {"points_planned_for_removal": planned[-1]}
    for name, runs in seconds.items():
        scale = 1000 if name.endswith("_ms") else 1
        values = [round(s * scale, 3) for s in runs]
        figures[name] = {"runs": values, "median": statistics.median(values)}
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = Shape(args.vms, args.points, args.log_lines)
    server = PostgresServer()
    figures: dict[str, Any] = {"vms": args.vms, "runs": args.runs, "stale_backups": args.stale}
    opened: dict[str, tuple[Hub, str]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sendense-bench-db-", dir=args.tmp) as tmp:
        try:
            server.start()
            urls = {
                "sqlite": f"sqlite:///{Path(tmp) / 'sqlite' / 'hub.db'}",
                "postgresql": server.admin_url(server.create_database()),
            }
            for db, url in urls.items():
                opened[db] = open_hub(Path(tmp) / db, url)
            made: dict[str, Fill] = {}
            for db, (hub, repo_id) in opened.items():
                made[db], figures[f"fill_{db}_s"] = fill(hub, repo_id, shape)
                print(f"{db}: {made[db].rows} in {figures[f'fill_{db}_s']:.1f} s", flush=True)
            t0 = time.perf_counter()
            directories = [hub.task_logs.directory for hub, _ in opened.values()]
            figures["log_lines"] = write_logs(directories, shape, made["sqlite"].finished)
            figures["logs_s"] = time.perf_counter() - t0
            figures["rows"] = made["sqlite"].rows
            for db, (hub, repo_id) in opened.items():
                figures[db] = measure(hub, repo_id, made[db], args)
                print(f"{db}: measured", flush=True)
        finally:
            for hub, _ in opened.values():
                hub.close()
            server.stop()
    figures["wall_s"] = time.perf_counter() - started
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--log-lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stale", type=int, default=4, help="backups running at the crash")
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    args = parser.parse_args()
    figures = run(args)
    print(f"{'figure':<20}{'SQLite':>12}{'PostgreSQL':>12}")
    for name in FIGURES:
        a, b = (figures[db][name]["median"] for db in DATABASES)
        print(f"{name:<20}{a:>12.3f}{b:>12.3f}")
    print(f"wall time {figures['wall_s']:.0f} s")
    top = {f"db_{name}": figures["sqlite"][name]["median"] for name in FIGURES}
    top |= {f"db_{name}_postgresql": figures["postgresql"][name]["median"] for name in FIGURES}
    record("db_size", figures, top)


if __name__ == "__main__":
    main()
