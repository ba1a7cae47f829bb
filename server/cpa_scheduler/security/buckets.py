"""Token buckets: the math, an in-process store of buckets (embedded mode) and one shared through
Redis (distributed mode), where one Lua script refills and takes atomically.

A rate of N calls per minute is a bucket of N tokens that refills at N/60 tokens a second: a
caller idle for a minute may burst N calls at once, then goes on at the steady rate. A call
costs one token (a batch more, see api/rate_limiter.py); a refused call takes nothing and learns
how long until its cost is back in the bucket.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_minute` calls a minute, all of them at once after a quiet minute."""

    per_minute: int

    @property
    def capacity(self) -> float:
        return float(self.per_minute)

    @property
    def refill_per_s(self) -> float:
        return self.per_minute / 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # Seconds until the call's cost would be admitted (0 when allowed).
    retry_after_s: float = 0.0
    # Which of the buckets asked refused (the first that did), -1 when allowed.
    refused: int = -1


ALLOWED = Decision(True)

# One bucket of a call: its key and its rate.
Ask = tuple[str, Rate]


def charge(rate: Rate, cost: int) -> float:
    """What a call of `cost` takes: at most the whole bucket, so a batch larger than a minute's
    allowance waits for a full bucket instead of never being admitted."""
    return min(float(cost), rate.capacity)


def refill(tokens: float, elapsed_s: float, rate: Rate) -> float:
    """The tokens of a bucket that held `tokens` `elapsed_s` ago."""
    return min(rate.capacity, tokens + max(0.0, elapsed_s) * rate.refill_per_s)


def decide(held: Sequence[float], asks: Sequence[Ask], cost: int) -> Decision:
    """Whether buckets holding `held` tokens (refilled) admit `cost` from each, all or none.
    The Lua script below is the same computation."""
    for index, (tokens, (_, rate)) in enumerate(zip(held, asks, strict=True)):
        need = charge(rate, cost)
        if tokens < need:
            return Decision(False, (need - tokens) / rate.refill_per_s, index)
    return ALLOWED


class Buckets(Protocol):
    async def take(self, asks: Sequence[Ask], cost: int) -> Decision:
        """Take `cost` tokens from every bucket of `asks` (each made full on first use), or
        from none when one of them holds too few."""
        ...


# Buckets kept in process before idle ones are dropped; a dropped bucket was full or nearly so
# (its caller quiet), so dropping it admits at most what a full bucket would.
LOCAL_MAX_BUCKETS = 100_000


class LocalBuckets:
    """Buckets in this process (the embedded mode, and the fallback while Redis fails)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = LOCAL_MAX_BUCKETS
    ) -> None:
        self._clock = clock
        self._max = max_buckets
        # key -> (tokens, when); insertion order is least recently used first.
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, asks: Sequence[Ask], cost: int) -> Decision:
        return self.take_now(asks, cost)

    def take_now(self, asks: Sequence[Ask], cost: int) -> Decision:
        now = self._clock()
        held = []
        for key, rate in asks:
            last = self._buckets.pop(key, None)
            held.append(rate.capacity if last is None else refill(last[0], now - last[1], rate))
        decision = decide(held, asks, cost)
        for tokens, (key, rate) in zip(held, asks, strict=True):
            # Re-inserted last: most recently used.
            self._buckets[key] = (tokens - charge(rate, cost) if decision.allowed else tokens, now)
        while len(self._buckets) > self._max:
            # The least recently used: idle longest, so refilled the most.
            del self._buckets[next(iter(self._buckets))]
        return decision


# KEYS: the buckets (hashes: v = tokens, t = ms of Redis' clock when last seen).
# ARGV: the cost, then per key its capacity and its refill per second; every cost is at most its
# bucket's capacity (charge()). Takes the cost from every bucket or from none.
# Returns {allowed (0/1), milliseconds until the cost would be admitted, 1-based index of the
# bucket that refused (0 when allowed)}.
# Redis' own clock (TIME), so replicas' clocks need not agree. A key expires once its bucket
# would be full again: an idle bucket and an absent one are the same, so idle ones vanish.
_TAKE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local held = {}
local refused = 0
local wait_ms = 0
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local cost = math.min(tonumber(ARGV[1]), capacity)
  local state = redis.call('HMGET', key, 'v', 't')
  local tokens = tonumber(state[1])
  local last = tonumber(state[2])
  if tokens == nil or last == nil then
    tokens = capacity
    last = now
  end
  local elapsed = now - last
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(capacity, tokens + elapsed * rate / 1000)
  held[i] = tokens
  if refused == 0 and tokens < cost then
    refused = i
    wait_ms = math.ceil((cost - tokens) * 1000 / rate)
  end
end
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local tokens = held[i]
  if refused == 0 then tokens = tokens - math.min(tonumber(ARGV[1]), capacity) end
  redis.call('HSET', key, 'v', tostring(tokens), 't', now)
  redis.call('PEXPIRE', key, math.ceil((capacity - tokens) * 1000 / rate) + 1000)
end
if refused == 0 then return {1, 0, 0} end
return {0, wait_ms, refused}
"""


class RedisBuckets:
    """Buckets every replica shares, one Redis round trip a call. redis-py's script object runs
    EVALSHA and, when Redis answers NOSCRIPT (restarted, flushed), loads the script again."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_TAKE_SCRIPT)

    async def take(self, asks: Sequence[Ask], cost: int) -> Decision:
        args: list[float | str] = [cost]
        for _, rate in asks:
            # repr: every digit of the rate (a str() of a float may round).
            args += [rate.capacity, repr(rate.refill_per_s)]
        allowed, wait_ms, refused = await self._script(keys=[k for k, _ in asks], args=args)
        if int(allowed):
            return ALLOWED
        return Decision(False, max(int(wait_ms), 1) / 1000.0, int(refused) - 1)


# After Redis failed, how long the local buckets stand in before Redis is tried again.
REDIS_RETRY_S = 1.0
# At most one warning about the fallback per this many seconds.
_WARN_INTERVAL_S = 10.0


class SharedBuckets:
    """RedisBuckets, and while Redis fails (an error, or no answer within `timeout_s`) this
    replica's own LocalBuckets: the limit then holds per replica instead of across them (fail
    open to the local limit, with a warning), since a replica whose Redis is gone is taken out
    of rotation by its health check anyway and refusing every call would add nothing."""

    def __init__(
        self,
        redis: RedisBuckets,
        *,
        timeout_s: float,
        local: LocalBuckets | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self.local = local or LocalBuckets(clock=clock)
        self._clock = clock
        self._local_until = -math.inf
        self._last_warning = -math.inf
        self.fallbacks = 0  # calls decided locally since start (tests, metrics)

    async def take(self, asks: Sequence[Ask], cost: int) -> Decision:
        now = self._clock()
        if now >= self._local_until:
            try:
                return await asyncio.wait_for(self._redis.take(asks, cost), self._timeout_s)
            except (RedisError, OSError, TimeoutError) as error:
                self._local_until = now + REDIS_RETRY_S
                if now - self._last_warning >= _WARN_INTERVAL_S:
                    self._last_warning = now
                    log.warning(
                        "rate limits: Redis failed (%s); this replica limits on its own for "
                        "now (the limits hold per replica until Redis answers again)",
                        error or type(error).__name__,
                    )
        self.fallbacks += 1
        return self.local.take_now(asks, cost)
