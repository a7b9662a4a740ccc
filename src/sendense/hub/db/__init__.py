"""The hub's job database: models, engine and sessions, Alembic migrations."""
