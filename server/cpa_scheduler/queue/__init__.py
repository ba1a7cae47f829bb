"""Where QUEUED tasks wait for an agent: one queue per requirement key (in-process or Redis)."""

from .interface import WorkItem, WorkQueue
from .local_queue import LocalWorkQueue
from .redis_queue import RedisWorkQueue

__all__ = [
    # Interface
    "WorkItem",
    "WorkQueue",
    # Implementations
    "LocalWorkQueue",
    "RedisWorkQueue",
]
