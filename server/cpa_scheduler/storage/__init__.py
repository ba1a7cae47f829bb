"""Durable state: the Store interface and its implementations (SQLite embedded, PostgreSQL)."""

from .data_dir import DataDirectoryInUseError
from .interface import (
    CallbackDelivery,
    CallbackOutcome,
    CallbackPosition,
    CallbackState,
    EndPosition,
    QueuedTask,
    Store,
    StoredMessage,
)
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
    "CallbackDelivery",
    "CallbackOutcome",
    "CallbackPosition",
    "CallbackState",
    "EndPosition",
    "QueuedTask",
    "Store",
    "StoredMessage",
    # Implementations
    "PostgresStore",
    "SqliteStore",
    # The embedded store's directory is held by another process
    "DataDirectoryInUseError",
    # PostgreSQL schema and errors
    "DatabaseUnavailableError",
    "InvalidDatabaseUrlError",
    "SchemaMismatchError",
    "head_revision",
    "migrate",
    "schema_revision",
]
