"""Alembic environment: runs on the engine the hub hands over (never a URL in a file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from sendense.hub.db.models import Base

engine = context.config.attributes.get("connection_engine")
if not isinstance(engine, Engine):
    raise RuntimeError("sendense migrations run through Database.migrate()")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
