"""Live fan-out of stored job events to watchers (in-process, or across replicas via Redis)."""

from .bus import EventBus, LocalEventBus, Subscription
from .redis_bus import RedisEventBus

__all__ = [
    # Interface
    "EventBus",
    "Subscription",
    # Implementations
    "LocalEventBus",
    "RedisEventBus",
]
