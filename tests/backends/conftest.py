"""Fixtures of the backend contract suites: the in-process and the Redis implementations of the
work queue, event bus and agent directory, each Redis test under a key prefix of its own.

Redis comes from tests/fixtures/services.py: probed once per session, a failure under CI=true and
a skip (with the reason) elsewhere; `redis_prefix` deletes the test's keys afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from cpa_scheduler.dispatch import AgentProfile, AgentSession, Outbound, SessionRegistry
from cpa_scheduler.dispatch.redis_directory import RedisAgentDirectory
from cpa_scheduler.events import RedisEventBus
from cpa_scheduler.queue import LocalWorkQueue, RedisWorkQueue, WorkQueue
from tests.fixtures.tcp_proxy import TcpProxy

# How long a test waits for something it expects before it fails.
DEADLINE_S = 10.0


async def wait_until(condition: Callable[[], Awaitable[bool]], *, what: str) -> None:
    """Checks `condition` until it holds or DEADLINE_S passes (for states without an event)."""
    deadline = time.monotonic() + DEADLINE_S
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


class ReadySignal:
    """Records the queue's on_ready calls so a test can wait for the next one."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def __call__(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        """The next call (or one that came since the last wait); fails after DEADLINE_S."""
        try:
            await asyncio.wait_for(self._event.wait(), DEADLINE_S)
        except TimeoutError:
            pytest.fail("on_ready was not called")
        self._event.clear()


@dataclass
class QueueReplica:
    queue: WorkQueue
    ready: ReadySignal


@dataclass
class Backend:
    """Which implementation a contract test runs against; Redis ones share `redis` and `prefix`."""

    kind: Literal["local", "redis"]
    redis: Redis | None = None
    prefix: str = ""


@pytest.fixture
async def redis_client(redis_server_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    # A sync fixture, so Redis (and its probe) is set up only for the Redis variant.
    if request.param == "local":
        return Backend("local")
    return Backend(
        "redis",
        redis=request.getfixturevalue("redis_client"),
        prefix=request.getfixturevalue("redis_prefix"),
    )


@pytest.fixture
def redis_backend(redis_client: Redis, redis_prefix: str) -> Backend:
    return Backend("redis", redis=redis_client, prefix=redis_prefix)


QueueFactory = Callable[..., Awaitable[QueueReplica]]


@asynccontextmanager
async def queue_factory(backend: Backend) -> AsyncIterator[QueueFactory]:
    """Makes queues of `backend` (Redis: one replica per call, sharing the prefix) and closes
    them on exit. A Redis queue is returned once its listener is subscribed."""
    made: list[WorkQueue] = []

    async def make(
        *, replica_id: str = "replica-a", claim_idle_ms: int = 10_000, redis: Redis | None = None
    ) -> QueueReplica:
        ready = ReadySignal()
        if backend.kind == "local":
            local_queue = LocalWorkQueue()
            local_queue.on_ready = ready
            made.append(local_queue)
            return QueueReplica(local_queue, ready)
        client = redis or backend.redis
        assert client is not None
        redis_queue = RedisWorkQueue(
            client,
            replica_id=replica_id,
            claim_idle_ms=claim_idle_ms,
            prefix=backend.prefix,
            delayed_poll_interval_s=0.1,
        )
        redis_queue.on_ready = ready
        made.append(redis_queue)
        await redis_queue.start()
        # The listener calls on_ready once it holds its subscription: consume that call.
        await ready.wait()
        return QueueReplica(redis_queue, ready)

    try:
        yield make
    finally:
        for queue in made:
            await queue.close()


@pytest.fixture
async def queues(backend: Backend) -> AsyncIterator[QueueFactory]:
    """Queues of each implementation in turn (the contract suite)."""
    async with queue_factory(backend) as make:
        yield make


@pytest.fixture
async def redis_queues(redis_backend: Backend) -> AsyncIterator[QueueFactory]:
    """Redis queues only: what several replicas sharing one queue promise."""
    async with queue_factory(redis_backend) as make:
        yield make


@pytest.fixture
async def buses(
    redis_client: Redis, redis_prefix: str
) -> AsyncIterator[Callable[[], Awaitable[RedisEventBus]]]:
    """Makes started Redis event buses (one per replica) and closes them at teardown."""
    made: list[RedisEventBus] = []

    async def make() -> RedisEventBus:
        bus = RedisEventBus(redis_client, prefix=redis_prefix)
        made.append(bus)
        await bus.start()
        return bus

    try:
        yield make
    finally:
        for bus in made:
            await bus.close()


DirectoryFactory = Callable[..., Awaitable[RedisAgentDirectory]]


@pytest.fixture
async def directories(redis_client: Redis, redis_prefix: str) -> AsyncIterator[DirectoryFactory]:
    """Makes Redis agent directories (started unless `start=False`) and closes them."""
    made: list[RedisAgentDirectory] = []

    async def make(
        replica_id: str,
        sessions: SessionRegistry,
        *,
        announce_interval_s: float = 0.5,
        start: bool = True,
    ) -> RedisAgentDirectory:
        directory = RedisAgentDirectory(
            redis_client,
            sessions,
            replica_id=replica_id,
            announce_interval_s=announce_interval_s,
            prefix=redis_prefix,
        )
        made.append(directory)
        if start:
            await directory.start()
        return directory

    try:
        yield make
    finally:
        for directory in made:
            await directory.close()


@dataclass
class FakeStream:
    """The delivering end of an agent stream: what the server sent, and a signal per message."""

    sent: list[Outbound] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, message: Outbound) -> None:
        self.sent.append(message)
        self.arrived.set()


def make_session(agent_id: str, tenant: str, stream: FakeStream | None = None) -> AgentSession:
    now = datetime.now(UTC)
    stream = stream or FakeStream()
    return AgentSession(
        profile=AgentProfile(
            agent_id=agent_id,
            tenant=tenant,
            name=f"{agent_id} name",
            version="1.2.3",
            actions=frozenset({"click", "type"}),
            capabilities=frozenset({"browser"}),
            labels={"site": "berlin"},
            slots=2,
        ),
        connect_time=now,
        last_seen_time=now,
        deliver=stream.deliver,
        close=lambda: None,
        credits=2,
    )


@pytest.fixture
async def redis_proxy(redis_server_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A proxy in front of the test Redis, and the Redis URL through it."""
    url = urlsplit(redis_server_url)
    proxy = TcpProxy(target_host=url.hostname or "127.0.0.1", target_port=url.port or 6379)
    port = await proxy.start()
    try:
        yield proxy, url._replace(netloc=f"127.0.0.1:{port}").geturl()
    finally:
        await proxy.close()


@pytest.fixture
def unreachable_redis_url() -> str:
    """A Redis URL nobody listens on (a port that was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"
