"""Token buckets against the real Redis: the Lua script computes what the in-process buckets do
(one contract, run on both), replicas sharing Redis share the buckets, NOSCRIPT is survived,
idle buckets expire, and a failing Redis falls back to per-replica limits with a warning."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cpa_scheduler.redis_keys import RedisKeys
from cpa_scheduler.security.buckets import (
    Buckets,
    LocalBuckets,
    Rate,
    RedisBuckets,
    SharedBuckets,
)
from tests.fixtures.tcp_proxy import TcpProxy

from .conftest import wait_until

# A minute of 60 tokens refills one a second: refusals within a test never see a refill worth
# a whole token unless the test waits for it.
RATE = Rate(60)


@pytest.fixture
def keys(redis_prefix: str) -> RedisKeys:
    return RedisKeys(redis_prefix)


@pytest.fixture(params=["local", "redis"])
def buckets(request: pytest.FixtureRequest, redis_client: Redis) -> Buckets:
    if request.param == "local":
        return LocalBuckets()
    return RedisBuckets(redis_client)


async def test_burst_then_refusal_with_the_delay_of_one_token(
    buckets: Buckets, keys: RedisKeys
) -> None:
    key = keys.rate_bucket("key", "burst")
    decisions = [await buckets.take([(key, RATE)], 1) for _ in range(61)]
    assert all(d.allowed for d in decisions[:60])
    refused = decisions[60]
    assert (refused.allowed, refused.refused) == (False, 0)
    assert 0.9 <= refused.retry_after_s <= 1.0


async def test_all_or_none_and_which_bucket_refused(buckets: Buckets, keys: RedisKeys) -> None:
    ip, key = keys.rate_bucket("ip", "a"), keys.rate_bucket("key", "a")
    assert (await buckets.take([(ip, Rate(3)), (key, RATE)], 3)).allowed
    refused = await buckets.take([(key, RATE), (ip, Rate(3))], 1)
    assert (refused.allowed, refused.refused) == (False, 1)
    # The refused call took nothing from the first bucket: 57 are left of its 60.
    assert (await buckets.take([(key, RATE)], 57)).allowed
    assert not (await buckets.take([(key, RATE)], 1)).allowed


async def test_a_cost_above_the_capacity_takes_the_whole_bucket(
    buckets: Buckets, keys: RedisKeys
) -> None:
    key = keys.rate_bucket("key", "batch")
    assert (await buckets.take([(key, Rate(5))], 50)).allowed
    refused = await buckets.take([(key, Rate(5))], 1)
    assert not refused.allowed
    assert 11.9 <= refused.retry_after_s <= 12.0  # 5 a minute: one per 12 s


async def test_tokens_come_back_at_the_rate(buckets: Buckets, keys: RedisKeys) -> None:
    fast = Rate(6000)  # 100 a second
    key = keys.rate_bucket("key", "refill")
    assert (await buckets.take([(key, fast)], 6000)).allowed
    refused = await buckets.take([(key, fast)], 10)
    assert not refused.allowed
    assert 0.09 <= refused.retry_after_s <= 0.1

    async def admitted() -> bool:
        return (await buckets.take([(key, fast)], 10)).allowed

    await wait_until(admitted, what="10 tokens refilled")


# -- Redis only -------------------------------------------------------------------------------


@pytest.fixture
async def second_replica(redis_server_url: str) -> AsyncIterator[Redis]:
    """Another client of the same Redis: what a second replica holds."""
    client = Redis.from_url(redis_server_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_replicas_share_one_bucket(
    redis_client: Redis, second_replica: Redis, keys: RedisKeys
) -> None:
    one, two = RedisBuckets(redis_client), RedisBuckets(second_replica)
    key = keys.rate_bucket("key", "shared")
    decisions = [await (one if i % 2 else two).take([(key, RATE)], 1) for i in range(60)]
    assert all(d.allowed for d in decisions)
    for replica in (one, two):
        refused = await replica.take([(key, RATE)], 1)
        assert not refused.allowed
        assert refused.retry_after_s > 0


async def test_a_flushed_script_cache_is_survived(redis_client: Redis, keys: RedisKeys) -> None:
    buckets = RedisBuckets(redis_client)
    key = keys.rate_bucket("key", "noscript")
    assert (await buckets.take([(key, RATE)], 1)).allowed
    await redis_client.script_flush()  # as a Redis restart would: EVALSHA answers NOSCRIPT
    assert (await buckets.take([(key, RATE)], 59)).allowed
    assert not (await buckets.take([(key, RATE)], 1)).allowed


async def test_a_bucket_expires_once_it_would_be_full(redis_client: Redis, keys: RedisKeys) -> None:
    buckets = RedisBuckets(redis_client)
    slow, fast = keys.rate_bucket("key", "slow"), keys.rate_bucket("key", "fast")
    await buckets.take([(slow, RATE)], 30)
    # 30 tokens missing at one a second: full in 30 s, gone a second later.
    assert 30_000 <= await redis_client.pttl(slow) <= 31_000
    await buckets.take([(fast, Rate(60_000))], 10)  # full again within 10 ms

    async def gone() -> bool:
        return not await redis_client.exists(fast)

    await wait_until(gone, what="the idle bucket expired")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_failing_redis_falls_back_to_local_limits_and_comes_back(
    redis_proxy: tuple[TcpProxy, str],
    redis_client: Redis,
    keys: RedisKeys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, url = redis_proxy
    through_proxy = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    clock = Clock()
    shared = SharedBuckets(RedisBuckets(through_proxy), timeout_s=1.0, clock=clock)
    key = keys.rate_bucket("key", "fallback")

    async def take(cost: int) -> bool:
        return (await shared.take([(key, Rate(10))], cost)).allowed

    try:
        assert await take(4)  # through Redis: 6 left there
        proxy.refusing = True
        proxy.cut()
        with caplog.at_level(logging.WARNING, logger="cpa_scheduler.security.buckets"):
            # Local buckets now: a full bucket of this replica's own, and it limits.
            assert await take(10)
            assert not await take(1)
        assert shared.fallbacks == 2
        assert sum("Redis failed" in r.getMessage() for r in caplog.records) == 1
        proxy.refusing = False
        clock.now += 1.0  # the fallback's second is over: Redis is asked again
        assert await take(6)
        assert not await take(1)
        assert shared.fallbacks == 2
        tokens = await redis_client.hget(key, "v")
        assert tokens is not None
        assert float(tokens) < 1
    finally:
        await through_proxy.aclose()
