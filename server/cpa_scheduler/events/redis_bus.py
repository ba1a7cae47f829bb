"""The event bus of the distributed mode: events published on any replica reach the watchers of
every replica through one Redis pub/sub channel; subscriptions stay local (an embedded
LocalEventBus).

Messages are coalesced (cpa_scheduler.coalescing): the events published during one loop
iteration, or while the previous message was being sent, go out as one message, in order.

Pub/sub is at most once: a message published while a replica is disconnected from Redis never
reaches it. That is acceptable because the bus is only the live feed: events are stored first
and WatchJob re-reads the store when it sees a gap in the sequence numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cpa_scheduler import json_text
from cpa_scheduler.background import stop_tasks
from cpa_scheduler.coalescing import Coalescer
from cpa_scheduler.domain import JobEvent
from cpa_scheduler.redis_keys import DEFAULT_PREFIX, RedisKeys
from cpa_scheduler.redis_support import ChannelListener
from cpa_scheduler.storage.codec import event_from_data, event_to_data

from .bus import SUBSCRIPTION_BUFFER
from .fanout import Subscription, Watchers

log = logging.getLogger(__name__)

# Most publish calls in one message: a subscriber decodes a message in one go, holding its loop.
MAX_CALLS_PER_MESSAGE = 256
# A watcher that hears nothing for this long re-reads the store: the last event of a job lost
# on the way (pub/sub is at most once) would otherwise leave it waiting for ever.
QUIET_REREAD_S = 2.0


class RedisEventBus:
    """EventBus over Redis pub/sub. `start()` subscribes (done when it returns) and runs the
    listener; `close()` stops it (the Redis client belongs to the caller)."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_buffered: int = SUBSCRIPTION_BUFFER,
    ) -> None:
        self._redis = redis
        self._channel = RedisKeys(prefix).events_channel
        self._local = Watchers(max_buffered=max_buffered)
        self._quiet: asyncio.Task[None] | None = None
        # Tells this instance's own messages apart: publish already delivered them locally.
        self._origin = uuid.uuid4().hex
        # Every message starts with its origin (publish writes it first), so this replica skips
        # its own messages, most of what it receives, without decoding them.
        self._own_prefix = json_text.dumps({"origin": self._origin})[:-1].encode()
        self._listener = ChannelListener(
            redis,
            [self._channel],
            on_message=self._receive,
            name="event listener",
            task_name="redis-event-listener",
            logger=log,
        )
        self._outbox: Coalescer[dict[str, Any]] = Coalescer(
            self._send, max_calls=MAX_CALLS_PER_MESSAGE, name="redis-event-outbox"
        )

    @property
    def watchers(self) -> Watchers:
        return self._local

    async def start(self) -> None:
        await self._listener.start()
        self._quiet = asyncio.create_task(
            self._local.reread_quiet_forever(QUIET_REREAD_S), name="quiet-watchers"
        )

    async def close(self) -> None:
        if self._quiet is not None:
            await stop_tasks([self._quiet])
            self._quiet = None
        await self._outbox.close()
        await self._listener.close()

    async def publish(self, events: Sequence[JobEvent]) -> None:
        """Deliver to this replica's watchers now, and to the others' with the next message
        (not waited for). Never raises for a Redis failure: the events are stored, and watchers
        of other replicas re-read the store."""
        if not events:
            return
        self._local.deliver(events)
        self._outbox.submit([event_to_data(event) for event in events])

    async def _send(self, events: list[dict[str, Any]]) -> None:
        message = json_text.dumps({"origin": self._origin, "events": events})
        try:
            await self._redis.publish(self._channel, message)
        except (RedisError, OSError) as error:
            log.warning("publishing %d job events to Redis failed: %s", len(events), error)

    def subscribe(self, tenant: str, job_id: str) -> Subscription:
        return self._local.subscribe(tenant, job_id)

    def _receive(self, data: bytes) -> None:
        if data.startswith(self._own_prefix):
            return
        try:
            message: dict[str, Any] = json.loads(data)
            if message["origin"] == self._origin:
                return
            events = [event_from_data(event) for event in message["events"]]
        except (TypeError, ValueError, KeyError):
            log.exception("dropping an unreadable event message")
            return
        self._local.deliver(events)
