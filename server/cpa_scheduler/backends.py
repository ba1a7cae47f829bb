"""Builds the backends from settings: the embedded default (SQLite, in-process queue, bus and
directory) or the distributed mode (PostgreSQL for the truth, Redis for the moving work).

Only this module knows which implementations exist; everything else uses the interfaces.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .artifacts import ArtifactContent, FileContent
from .dispatch import ControlMessage, SessionRegistry
from .dispatch.directory import AgentDirectory, LocalAgentDirectory
from .events import EventBus, LocalEventBus
from .health import Check
from .queue import LocalWorkQueue, WorkQueue
from .security.buckets import Buckets, LocalBuckets, RedisBuckets, SharedBuckets
from .settings import Settings
from .storage import SqliteStore, Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Backends:
    """The shared parts of a replica, and how to release them (in reverse order)."""

    store: Store
    queue: WorkQueue
    bus: EventBus
    directory: AgentDirectory
    distributed: bool
    artifacts: ArtifactContent
    # Rate limits' token buckets: in process, or shared by every replica through Redis.
    rate_buckets: Buckets = field(default_factory=LocalBuckets)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    health_checks: dict[str, Check] = field(default_factory=dict)
    # The distributed mode's Redis client (short-term memory keeps conversations there).
    redis: Any = None
    """What the health probe checks (cpa_scheduler.health): the store, and Redis if used."""

    def add_closer(self, close: Callable[[], Awaitable[None]]) -> None:
        """Release `close`'s part first when the backends close (it was opened on them)."""
        self._closers.append(close)

    async def close(self) -> None:
        for close in reversed(self._closers):
            try:
                await close()
            except Exception:  # closing the rest matters more than one failure
                log.exception("closing a backend failed")


async def open_store(settings: Settings) -> Store:
    """The store the settings select: PostgreSQL (database_url) or the embedded SQLite file."""
    if settings.database_url:
        from .storage.postgres_store import PostgresStore

        return await PostgresStore.open(
            settings.database_url, min_size=1, max_size=settings.database_pool_size
        )
    return await SqliteStore.open(settings.data_dir / "cpa.sqlite3")


async def open_backends(
    settings: Settings, *, replica_id: str, sessions: SessionRegistry
) -> Backends:
    if settings.redis_url and not settings.database_url:
        raise ValueError(
            "CPA_REDIS_URL needs CPA_DATABASE_URL: replicas share work through Redis and state "
            "through PostgreSQL; the embedded SQLite store serves one replica only"
        )
    closers: list[Callable[[], Awaitable[None]]] = []
    artifacts: ArtifactContent
    store = await open_store(settings)
    closers.append(store.close)
    if settings.database_url:
        from .artifacts.postgres import PostgresContent

        artifacts = await PostgresContent.open(
            settings.database_url, max_size=settings.artifact_database_pool_size
        )
    else:
        # Beside the SQLite file, under the same directory lock.
        artifacts = FileContent(settings.data_dir / "artifacts")
    closers.append(artifacts.close)
    if not settings.redis_url:
        if settings.database_url:
            log.warning("no CPA_REDIS_URL: this replica cannot share work with other replicas")
        queue = LocalWorkQueue()
        closers.append(queue.close)
        return Backends(
            store=store,
            queue=queue,
            bus=LocalEventBus(max_buffered=settings.watch_buffer_events),
            directory=LocalAgentDirectory(sessions, replica_id=replica_id),
            distributed=False,
            artifacts=artifacts,
            _closers=closers,
            health_checks={"store": store.ping},
        )
    return await _open_redis(settings, replica_id, sessions, store, artifacts, closers)


# How long a call waits for a free Redis connection before it fails.
REDIS_POOL_WAIT_S = 10.0


async def _open_redis(
    settings: Settings,
    replica_id: str,
    sessions: SessionRegistry,
    store: Store,
    artifacts: ArtifactContent,
    closers: list[Callable[[], Awaitable[None]]],
) -> Backends:
    import redis.asyncio as aioredis

    from .dispatch.redis_directory import RedisAgentDirectory
    from .events.redis_bus import RedisEventBus
    from .queue.redis_queue import RedisWorkQueue

    # Blocking: a burst of changes waits for a connection instead of failing with "Too many
    # connections" (a failed publish or ack costs a reconcile or a lease to repair).
    # Socket timeouts: without them a Redis that stops answering (a partition, a frozen host)
    # holds every call until TCP gives up, minutes later. Subscriptions are not cut by them:
    # redis-py waits for pub/sub messages without a timeout; TCP keepalives (as for PostgreSQL)
    # notice a subscription's peer that vanished in about a minute instead of two hours.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        timeout=REDIS_POOL_WAIT_S,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_keepalive=True,
        socket_keepalive_options={
            socket.TCP_KEEPIDLE: 30,
            socket.TCP_KEEPINTVL: 10,
            socket.TCP_KEEPCNT: 3,
        },
    )
    redis = aioredis.Redis.from_pool(pool)
    closers.append(redis.aclose)
    prefix = settings.redis_key_prefix
    redis_queue = RedisWorkQueue(
        redis,
        replica_id=replica_id,
        claim_idle_ms=round(settings.queue_claim_idle_s * 1000),
        prefix=prefix,
    )
    await redis_queue.start()
    closers.append(redis_queue.close)
    bus = RedisEventBus(redis, prefix=prefix, max_buffered=settings.watch_buffer_events)
    await bus.start()
    closers.append(bus.close)
    directory = RedisAgentDirectory(redis, sessions, replica_id=replica_id, prefix=prefix)

    def deliver_cancel(cancel: ControlMessage, tenant: str, agent_id: str) -> None:
        session = sessions.get(tenant, agent_id)
        if session is not None:
            session.deliver(cancel)

    directory.on_cancel = deliver_cancel
    await directory.start()
    closers.append(directory.close)
    # The health probe's PING on a connection of its own: the shared pool may be busy.
    probe = aioredis.Redis.from_url(
        settings.redis_url,
        max_connections=2,
        socket_timeout=settings.health_probe_timeout_s,
        socket_connect_timeout=settings.health_probe_timeout_s,
    )
    closers.append(probe.aclose)

    async def ping_redis() -> None:
        await probe.ping()

    return Backends(
        store=store,
        queue=redis_queue,
        bus=bus,
        directory=directory,
        distributed=True,
        artifacts=artifacts,
        rate_buckets=SharedBuckets(
            RedisBuckets(redis), timeout_s=settings.rate_limit_redis_timeout_s
        ),
        _closers=closers,
        health_checks={"store": store.ping, "redis": ping_redis},
        redis=redis,
    )
