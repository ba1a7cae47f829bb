"""Where QUEUED tasks wait for an agent: one queue per requirement key (in-process for now)."""

from .local_queue import LocalWorkQueue

__all__ = ["LocalWorkQueue"]
