"""Short-term memory: a conversation's recent entries, per tenant, forgotten after the TTL. In
process the store's own clock is moved; in Redis the key's real TTL is set and an expired key is
gone (a tiny TTL, polled for the condition)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from cpa_scheduler.memory.conversation import LocalConversationMemory, RedisConversationMemory
from cpa_scheduler.memory.interface import ConversationEntry
from cpa_scheduler.redis_keys import RedisKeys


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(text: str, role: str = "user") -> ConversationEntry:
    return ConversationEntry(role=role, text=text, data={"n": len(text)})  # type: ignore[arg-type]


@pytest.fixture
async def redis_client(redis_server_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server_url)
    yield client
    await client.aclose()


async def test_in_process_entries_expire_after_the_ttl_since_the_last_entry() -> None:
    clock = Clock()
    memory = LocalConversationMemory(ttl_s=60, clock=clock)
    await memory.append("a", "c1", entry("hello"))
    clock.now += 59
    await memory.append("a", "c1", entry("again"))
    clock.now += 59

    assert [e.text for e in await memory.recent("a", "c1")] == ["hello", "again"]
    clock.now += 1
    assert await memory.recent("a", "c1") == []


async def test_in_process_bounds_entries_per_conversation_and_conversations_per_tenant() -> None:
    memory = LocalConversationMemory(ttl_s=60, max_entries=3, max_conversations=2, clock=Clock())
    for n in range(5):
        await memory.append("a", "c1", entry(f"m{n}"))
    await memory.append("a", "c2", entry("second"))
    await memory.append("a", "c3", entry("third"))  # drops c1, the least recently used

    assert await memory.recent("a", "c1") == []
    assert [e.text for e in await memory.recent("a", "c2")] == ["second"]
    await memory.append("b", "c2", entry("other tenant"))
    assert [e.text for e in await memory.recent("a", "c2")] == ["second"]


async def test_in_process_recent_returns_the_last_entries_oldest_first() -> None:
    memory = LocalConversationMemory(ttl_s=60, clock=Clock())
    for n in range(5):
        await memory.append("a", "c", entry(f"m{n}"))

    got = await memory.recent("a", "c", limit=2)

    assert [e.text for e in got] == ["m3", "m4"]
    assert got[0].data == {"n": 2}
    assert got[0].at_unix_s > 0
    assert await memory.recent("a", "c", limit=0) == []


async def test_redis_keeps_entries_per_tenant_trimmed_with_the_ttl_set(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    memory = RedisConversationMemory(redis_client, keys, ttl_s=600, max_entries=3)
    for n in range(5):
        await memory.append("a", "c1", entry(f"m{n}", role="scheduler"))

    got = await memory.recent("a", "c1")

    assert [(e.role, e.text) for e in got] == [("scheduler", f"m{n}") for n in (2, 3, 4)]
    assert await memory.recent("b", "c1") == []
    assert 0 < await redis_client.pttl(keys.conversation("a", "c1")) <= 600_000


async def test_redis_entries_are_gone_after_the_ttl(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    memory = RedisConversationMemory(redis_client, RedisKeys(redis_prefix), ttl_s=0.05)
    await memory.append("a", "c1", entry("short lived"))

    # Each round trip waits on Redis, which expires the key on its own clock; bounded.
    async with asyncio.timeout(5):
        while await memory.recent("a", "c1"):
            pass
    assert not await redis_client.exists(RedisKeys(redis_prefix).conversation("a", "c1"))
