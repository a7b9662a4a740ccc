"""Alembic environment: runs on the engine the hub hands over (never a URL in a file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from sendense.hub.db.models import Base

engine = context.config.attributes.get("connection_engine")
if not isinstance(engine, Engine):
    raise RuntimeError("sendense migrations run through Database.migrate()")

with engine.connect() as connection:
    # SQLite changes a column by rebuilding its table (copy, drop, rename), and
    # dropping a table other tables point at fails while foreign keys are
    # enforced: they are off during the migration (the pragma works only outside
    # a transaction) and checked as a whole after it.
    sqlite = connection.dialect.name == "sqlite"
    driver = connection.connection.driver_connection if sqlite else None
    if driver is not None:
        driver.execute("PRAGMA foreign_keys = OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
        if driver is not None:
            broken = driver.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
    finally:
        if driver is not None:
            driver.execute("PRAGMA foreign_keys = ON")
