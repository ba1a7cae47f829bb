"""Repeating a call the scheduler refused with RATE_LIMITED, after the delay it asked for.

Such a refusal comes from the scheduler's rate limiter before the call runs, so repeating it is
safe for every method, submissions and cancellations included.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import CpaError

_T = TypeVar("_T")

RATE_LIMITED = "RATE_LIMITED"


@dataclass(frozen=True, slots=True)
class RateLimitRetry:
    """How a client answers RATE_LIMITED: up to `attempts` repeats, each after the server's
    google.rpc.RetryInfo delay (plus up to `jitter` of it, so that clients refused together do
    not return together), and only while that delay is at most `max_wait_s`; a longer wait is
    the caller's to decide, so the refusal is raised."""

    attempts: int = 3
    max_wait_s: float = 10.0
    jitter: float = 0.1


NO_RATE_LIMIT_RETRY = RateLimitRetry(attempts=0)


async def repeating_rate_limited(start: Callable[[], Awaitable[_T]], policy: RateLimitRetry) -> _T:
    """`await start()`, started again after each RATE_LIMITED refusal `policy` allows."""
    repeats = 0
    while True:
        try:
            return await start()
        except CpaError as error:
            delay = error.retry_delay_s
            if (
                error.reason != RATE_LIMITED
                or delay is None
                or repeats >= policy.attempts
                or delay > policy.max_wait_s
            ):
                raise
            repeats += 1
            await asyncio.sleep(delay * (1 + random.random() * policy.jitter))
