"""Retry policy: when a failed attempt runs again, and when it stops trying.

Pure arithmetic; the randomness source is injected so tests can pin the jitter.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import InvalidArgument, Reason

# Bounds that keep a policy from keeping a task alive forever or hammering an agent.
MAX_ATTEMPTS_LIMIT = 100
MAX_BACKOFF_LIMIT_S = 24 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    Attempt n (1-based) that failed waits `min(initial * multiplier**(n-1), max_backoff)`
    seconds, spread by +/- `jitter` (a fraction of that delay) before attempt n+1.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 1.0
    multiplier: float = 2.0
    max_backoff_s: float = 60.0
    jitter: float = 0.2
    non_retryable_codes: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, field_prefix: str = "retry_policy") -> None:
        """Raise InvalidArgument naming the first field out of bounds."""
        checks: Iterable[tuple[bool, str, str]] = (
            (
                1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT,
                "max_attempts",
                f"must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {self.max_attempts}",
            ),
            (
                0 <= self.initial_backoff_s <= MAX_BACKOFF_LIMIT_S,
                "initial_backoff",
                f"must be between 0 and {MAX_BACKOFF_LIMIT_S:g} s, got {self.initial_backoff_s:g}",
            ),
            (
                1.0 <= self.multiplier <= 10.0,
                "backoff_multiplier",
                f"must be between 1 and 10, got {self.multiplier:g}",
            ),
            (
                self.initial_backoff_s <= self.max_backoff_s <= MAX_BACKOFF_LIMIT_S,
                "max_backoff",
                f"must be between initial_backoff ({self.initial_backoff_s:g} s) and "
                f"{MAX_BACKOFF_LIMIT_S:g} s, got {self.max_backoff_s:g}",
            ),
            (
                0.0 <= self.jitter <= 1.0,
                "jitter",
                f"must be between 0 and 1, got {self.jitter:g}",
            ),
        )
        for ok, name, problem in checks:
            if not ok:
                raise InvalidArgument(
                    f"{name} {problem}",
                    reason=Reason.INVALID_RETRY_POLICY,
                    field=f"{field_prefix}.{name}",
                )

    def backoff_s(self, failed_attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt `failed_attempt` (1-based) failed."""
        if failed_attempt < 1:
            raise ValueError(f"attempts are numbered from 1, got {failed_attempt}")
        # Cap the exponent so huge attempt numbers do not overflow the float.
        exponent = min(failed_attempt - 1, 64)
        base = min(self.initial_backoff_s * self.multiplier**exponent, self.max_backoff_s)
        if self.jitter == 0.0 or base == 0.0:
            return base
        spread = base * self.jitter
        draw = (rng or random).uniform(-spread, spread)
        return max(0.0, min(base + draw, self.max_backoff_s))

    def should_retry(self, failed_attempt: int, *, error_code: str, retryable: bool) -> bool:
        """Whether attempt `failed_attempt` failing with `error_code` earns another attempt."""
        if not retryable or error_code in self.non_retryable_codes:
            return False
        return failed_attempt < self.max_attempts


DEFAULT_RETRY_POLICY = RetryPolicy()
