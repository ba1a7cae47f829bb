"""RetryPolicy: backoff arithmetic, jitter bounds, the retry decision and validation errors."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from cpa_scheduler.domain import DEFAULT_RETRY_POLICY, InvalidArgument, Reason, RetryPolicy


def test_defaults() -> None:
    assert (
        RetryPolicy(
            max_attempts=3,
            initial_backoff_s=1.0,
            multiplier=2.0,
            max_backoff_s=60.0,
            jitter=0.2,
            non_retryable_codes=frozenset(),
        )
        == DEFAULT_RETRY_POLICY
    )


@pytest.mark.parametrize(
    ("policy", "expected_s"),
    [
        (
            RetryPolicy(initial_backoff_s=1.0, multiplier=2.0, max_backoff_s=10.0, jitter=0.0),
            [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0],
        ),
        (
            RetryPolicy(initial_backoff_s=0.5, multiplier=3.0, max_backoff_s=60.0, jitter=0.0),
            [0.5, 1.5, 4.5, 13.5, 40.5, 60.0, 60.0],
        ),
        (
            RetryPolicy(initial_backoff_s=2.0, multiplier=1.0, max_backoff_s=2.0, jitter=0.0),
            [2.0] * 7,
        ),
        (
            RetryPolicy(initial_backoff_s=0.0, multiplier=2.0, max_backoff_s=5.0, jitter=0.5),
            [0.0] * 7,
        ),
    ],
    ids=["doubling-capped", "tripling-capped", "constant", "zero"],
)
def test_backoff_sequence_without_jitter(policy: RetryPolicy, expected_s: list[float]) -> None:
    assert [policy.backoff_s(n) for n in range(1, 8)] == expected_s


def test_backoff_of_a_huge_attempt_number_is_the_cap() -> None:
    policy = RetryPolicy(multiplier=10.0, max_backoff_s=300.0, jitter=0.0)

    assert policy.backoff_s(10_000) == 300.0


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_counts_attempts_from_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempts are numbered from 1"):
        RetryPolicy().backoff_s(attempt)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6])
def test_jitter_stays_within_its_fraction_and_reaches_both_sides(attempt: int) -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=2.0, max_backoff_s=100.0, jitter=0.5)
    rng = random.Random(1234)
    base = 2.0 ** (attempt - 1)

    draws = [policy.backoff_s(attempt, rng=rng) for _ in range(300)]

    assert all(base * 0.5 <= d <= base * 1.5 for d in draws)
    assert min(draws) < base * 0.75
    assert max(draws) > base * 1.25


def test_jitter_never_exceeds_the_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=2.0, max_backoff_s=100.0, jitter=0.5)
    rng = random.Random(99)

    draws = [policy.backoff_s(10, rng=rng) for _ in range(300)]

    assert all(50.0 <= d <= 100.0 for d in draws)
    assert min(draws) < 75.0


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy(jitter=0.3)

    first = [policy.backoff_s(3, rng=random.Random(7)) for _ in range(3)]
    again = [policy.backoff_s(3, rng=random.Random(7)) for _ in range(3)]
    other = policy.backoff_s(3, rng=random.Random(8))

    assert first == again
    assert other != first[0]


@pytest.mark.parametrize(
    ("max_attempts", "failed_attempt", "error_code", "retryable", "expected"),
    [
        (3, 1, "TIMEOUT", True, True),
        (3, 2, "TIMEOUT", True, True),
        (3, 3, "TIMEOUT", True, False),
        (3, 4, "TIMEOUT", True, False),
        (1, 1, "TIMEOUT", True, False),
        (3, 1, "TIMEOUT", False, False),
        (3, 1, "INVALID_CREDENTIALS", True, False),
        (3, 1, "ELEMENT_NOT_FOUND", True, False),
        (3, 1, "", True, True),
    ],
)
def test_should_retry(
    max_attempts: int, failed_attempt: int, error_code: str, retryable: bool, expected: bool
) -> None:
    policy = RetryPolicy(
        max_attempts=max_attempts,
        non_retryable_codes=frozenset({"INVALID_CREDENTIALS", "ELEMENT_NOT_FOUND"}),
    )

    assert (
        policy.should_retry(failed_attempt, error_code=error_code, retryable=retryable) is expected
    )


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"max_attempts": 0}, "max_attempts", "max_attempts must be between 1 and 100, got 0"),
        ({"max_attempts": 101}, "max_attempts", "max_attempts must be between 1 and 100, got 101"),
        (
            {"initial_backoff_s": -1.0},
            "initial_backoff",
            "initial_backoff must be between 0 and 86400 s, got -1",
        ),
        (
            {"initial_backoff_s": 90_000.0, "max_backoff_s": 90_000.0},
            "initial_backoff",
            "initial_backoff must be between 0 and 86400 s, got 90000",
        ),
        (
            {"multiplier": 0.5},
            "backoff_multiplier",
            "backoff_multiplier must be between 1 and 10, got 0.5",
        ),
        (
            {"multiplier": 11.0},
            "backoff_multiplier",
            "backoff_multiplier must be between 1 and 10, got 11",
        ),
        (
            {"initial_backoff_s": 5.0, "max_backoff_s": 1.0},
            "max_backoff",
            "max_backoff must be between initial_backoff (5 s) and 86400 s, got 1",
        ),
        (
            {"max_backoff_s": 100_000.0},
            "max_backoff",
            "max_backoff must be between initial_backoff (1 s) and 86400 s, got 100000",
        ),
        ({"jitter": -0.1}, "jitter", "jitter must be between 0 and 1, got -0.1"),
        ({"jitter": 1.5}, "jitter", "jitter must be between 0 and 1, got 1.5"),
        ({"jitter": math.nan}, "jitter", "jitter must be between 0 and 1, got nan"),
    ],
)
def test_invalid_policy_names_the_field(fields: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        RetryPolicy(**fields)

    assert caught.value.reason is Reason.INVALID_RETRY_POLICY
    assert caught.value.field == f"retry_policy.{field}"
    assert caught.value.message == message


def test_validate_takes_the_field_prefix_of_the_caller() -> None:
    policy = RetryPolicy(max_attempts=5)
    # Bypass the frozen dataclass to get a bad value past __post_init__.
    object.__setattr__(policy, "max_attempts", 0)

    with pytest.raises(InvalidArgument) as caught:
        policy.validate("todos[3].retry_policy")

    assert caught.value.field == "todos[3].retry_policy.max_attempts"


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 1},
        {"max_attempts": 100},
        {"initial_backoff_s": 0.0, "max_backoff_s": 0.0},
        {"multiplier": 1.0},
        {"multiplier": 10.0},
        {"max_backoff_s": 86_400.0},
        {"jitter": 0.0},
        {"jitter": 1.0},
    ],
)
def test_bounds_are_inclusive(fields: dict[str, Any]) -> None:
    RetryPolicy(**fields).validate()
