"""Live fan-out of stored job events to watchers (in-process, or across replicas via Redis)."""

from .bus import EventBus, LocalEventBus
from .fanout import (
    HEARTBEAT,
    FanOut,
    Heartbeat,
    LiveEvent,
    Subscription,
    Watchers,
    superseded_progress,
)
from .redis_bus import RedisEventBus

__all__ = [
    # Interface
    "EventBus",
    "Subscription",
    # Fan-out on this replica
    "FanOut",
    "HEARTBEAT",
    "Heartbeat",
    "LiveEvent",
    "Watchers",
    "superseded_progress",
    # Implementations
    "LocalEventBus",
    "RedisEventBus",
]
