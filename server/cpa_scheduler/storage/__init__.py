"""Durable state: the Store interface and its implementations (SQLite embedded; PostgreSQL next)."""

from .interface import QueuedTask, Store, StoredMessage
from .sqlite_store import SqliteStore

__all__ = [
    # Interface
    "QueuedTask",
    "Store",
    "StoredMessage",
    # Implementations
    "SqliteStore",
]
