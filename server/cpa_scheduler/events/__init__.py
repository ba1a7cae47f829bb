"""Live fan-out of stored job events to watchers (in-process now; Redis in distributed mode)."""

from .bus import EventBus, LocalEventBus, Subscription

__all__ = ["EventBus", "LocalEventBus", "Subscription"]
