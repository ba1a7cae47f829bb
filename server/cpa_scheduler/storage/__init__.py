"""Durable state: the Store interface and its implementations (SQLite embedded, PostgreSQL)."""

from .interface import EndPosition, QueuedTask, Store, StoredMessage
from .migrations import (
    DatabaseUnavailableError,
    InvalidDatabaseUrlError,
    SchemaMismatchError,
    head_revision,
    migrate,
    schema_revision,
)
from .postgres_store import PostgresStore
from .sqlite_store import SqliteStore

__all__ = [
    # Interface
    "EndPosition",
    "QueuedTask",
    "Store",
    "StoredMessage",
    # Implementations
    "PostgresStore",
    "SqliteStore",
    # PostgreSQL schema and errors
    "DatabaseUnavailableError",
    "InvalidDatabaseUrlError",
    "SchemaMismatchError",
    "head_revision",
    "migrate",
    "schema_revision",
]
