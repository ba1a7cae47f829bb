"""When a failed callback is tried again, and whether it is: the answer's status decides
(retry, or give up at once), a Retry-After of 429 and 503 sets the delay, else exponential
backoff with full jitter. Pure functions; the deliverer applies them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum


class Verdict(Enum):
    """What an HTTP status means for a delivery."""

    DELIVERED = "delivered"
    RETRY = "retry"
    PERMANENT = "permanent"


def verdict_of(status: int) -> Verdict:
    """2xx delivered; 408, 429 and 5xx worth another attempt; every other 4xx, and 3xx
    (redirects are not followed: they could lead anywhere), refused for good. Anything else
    (1xx) is retried."""
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in (408, 429) or status >= 500:
        return Verdict.RETRY
    if 300 <= status < 500:
        return Verdict.PERMANENT
    return Verdict.RETRY


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds (digits) or an HTTP date
    (a date in the past is 0); None when absent or malformed."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates: RFC 9110 dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    """Retry delays: attempt n (1-based) waits uniformly in [0, min(max_s, initial_s * 2**(n-1)))
    (full jitter), or what the receiver's Retry-After asks, capped at max_s."""

    initial_s: float
    max_s: float

    def delay_s(self, attempt: int, rng: random.Random, *, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.max_s)
        cap = min(self.max_s, self.initial_s * 2 ** min(attempt - 1, 62))
        return rng.uniform(0, cap)
