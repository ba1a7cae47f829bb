"""Alembic environment: runs the revisions on the URL that `migrate()` passes in the config.

All pending revisions run in one transaction under an advisory lock (PostgreSQL DDL is
transactional), so a failed or concurrent upgrade leaves the schema at a known revision.
"""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool, text

from cpa_scheduler.storage.migrations import ADVISORY_LOCK_KEY, connect_kwargs, libpq_url

config = context.config


def run_offline() -> None:
    """`alembic upgrade --sql`: print the SQL instead of running it."""
    context.configure(
        url="postgresql+psycopg://", literal_binds=True, transaction_per_migration=False
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    url = libpq_url(str(config.attributes["database_url"]))
    # The creator hands libpq the URL untouched: SQLAlchemy's own URL parser would have to
    # understand every libpq option and spelling.
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(url, **connect_kwargs(url)),
        poolclass=pool.NullPool,
    )
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, transaction_per_migration=False)
            with context.begin_transaction():
                # Before Alembic reads the current revision: a second migrator waits here,
                # then finds the schema at head and does nothing.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
