"""Where QUEUED tasks wait for an agent: one queue per requirement key (in-process for now)."""

from .interface import WorkItem, WorkQueue
from .local_queue import LocalWorkQueue

__all__ = ["LocalWorkQueue", "WorkItem", "WorkQueue"]
