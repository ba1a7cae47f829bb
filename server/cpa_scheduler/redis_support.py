"""What the Redis backends (work queue, event bus, agent directory) share: a pub/sub listener
that survives Redis outages, and how their background loops log a failure.

Pub/sub is at most once: whatever is published while a listener is disconnected never reaches
it. `ChannelListener` calls `on_subscribed` after every (re)subscription so its owner can
make up for what it may have missed. Key and channel names live in cpa_scheduler.redis_keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from .background import Backoff, stop_tasks
from .telemetry import metrics


def log_background_error(
    logger: logging.Logger, what: str, error: Exception, retry_delay_s: float
) -> None:
    """Log a failed round of background loop `what`: a warning when Redis (or the network)
    failed, the traceback when anything else did."""
    if isinstance(error, (RedisError, OSError)):
        metrics.redis_error(what)
        logger.warning("%s: Redis failed (%s); retrying in %.1f s", what, error, retry_delay_s)
    else:
        logger.exception("%s failed; retrying in %.1f s", what, retry_delay_s)


class ChannelListener:
    """Holds a subscription to `channels` and hands the data of each message to `on_message`,
    in a background task. `start()` subscribes (done when it returns; raises if Redis is
    unreachable) and starts the task; `close()` stops it. When Redis fails, the task logs (as
    `name`, to `logger`) and subscribes again with exponential backoff; `on_subscribed` is
    called whenever Redis confirms a subscription, the first one included.

    An exception from a callback counts as a failure: it is logged and the listener subscribes
    again. The Redis client belongs to the caller."""

    def __init__(
        self,
        redis: Redis,
        channels: Iterable[str],
        *,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], None] | None = None,
        name: str,
        task_name: str,
        logger: logging.Logger,
    ) -> None:
        self._redis = redis
        self._channels = tuple(channels)
        if not self._channels:
            raise ValueError("a ChannelListener needs at least one channel")
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._name = name
        self._task_name = task_name
        self._log = logger
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        self._pubsub = await self._subscribe()
        self._task = asyncio.create_task(self._listen_forever(), name=self._task_name)

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None
        if self._pubsub is not None:
            await self._close_pubsub(self._pubsub)
            self._pubsub = None

    async def _subscribe(self) -> PubSub:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(*self._channels)
        except BaseException:
            await self._close_pubsub(pubsub)
            raise
        return pubsub

    async def _close_pubsub(self, pubsub: PubSub) -> None:
        try:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except (RedisError, OSError) as error:
            self._log.debug("%s: closing the subscription failed: %s", self._name, error)

    async def _listen_forever(self) -> None:
        retry = Backoff()
        while True:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._subscribe()
                async for message in self._pubsub.listen():
                    retry.reset()
                    if message["type"] == "message":
                        data = message["data"]
                        self._on_message(data if isinstance(data, bytes) else data.encode())
                    elif message["type"] == "subscribe" and self._on_subscribed is not None:
                        self._on_subscribed()
            except Exception as error:
                log_background_error(self._log, self._name, error, retry.delay_s)
            if self._pubsub is not None:
                await self._close_pubsub(self._pubsub)
                self._pubsub = None
            await asyncio.sleep(retry.take())
