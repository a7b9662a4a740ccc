"""The hub's database: models, engine and sessions, Alembic migrations. State
that must survive a crash lives here. May import `sendense.common` only."""
