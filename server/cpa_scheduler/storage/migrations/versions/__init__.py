"""Alembic revisions of the PostgreSQL schema, one file each, applied in order by `migrate()`."""
