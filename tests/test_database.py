"""Migrations and the state machine's persistence, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from sendense.hub.db.database import Database
from sendense.hub.db.models import Base, Job, JobState, Vm, VmDisk


def test_migrations_build_exactly_the_models(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.migrate()
        db.migrate()  # idempotent
        tables = set(inspect(db.engine).get_table_names())
        assert {
            "repositories",
            "vms",
            "vm_disks",
            "jobs",
            "restore_points",
            "restore_point_disks",
            "nbd_ports",
            "nbd_exports",
            "nodes",
            "api_tokens",
        } <= tables
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        db.dispose()


def test_rows_survive_a_new_engine(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    with db.session() as s:
        vm = Vm(name="pgtest1")
        s.add(vm)
        s.flush()
        s.add(VmDisk(vm_id=vm.id, disk_key=2016, capacity_bytes=5 << 30))
        s.add(Job(vm_id=vm.id, state=JobState.RUNNING))
    db.dispose()
    again = Database(database_url)
    try:
        with again.session() as s:
            job = s.scalars(select(Job)).one()
            assert job.state is JobState.RUNNING
            assert job.created_at.tzinfo is not None
            disk = s.scalars(select(VmDisk)).one()
            assert disk.disk_key == 2016
    finally:
        again.dispose()
