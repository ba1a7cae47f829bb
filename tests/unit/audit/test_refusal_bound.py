"""RefusalBound: per-principal and total bounds on audited refusals, with the suppressed count
carried by the principal's next written refusal; clocks are explicit values, nothing waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cpa_scheduler.audit import RefusalBound

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ALICE = ("acme", "key:alice")
BOB = ("acme", "key:bob")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_principal_is_bounded_per_minute_and_the_rest_is_counted() -> None:
    bound = RefusalBound(per_minute=2, total_per_minute=100)
    assert [bound.admit(ALICE, at(i)) for i in range(5)] == [0, 0, None, None, None]
    # Another principal has its own allowance.
    assert bound.admit(BOB, at(5)) == 0
    # A minute after the window began: written again, carrying the three suppressed.
    assert bound.admit(ALICE, at(60)) == 3
    assert bound.admit(ALICE, at(61)) == 0


def test_all_principals_together_are_bounded_too() -> None:
    bound = RefusalBound(per_minute=10, total_per_minute=3)
    forged = [("acme", f"key:forged-{i}") for i in range(6)]
    admitted = [bound.admit(key, at(1)) for key in forged]
    assert admitted == [0, 0, 0, None, None, None]
    assert bound.admit(forged[4], at(61)) == 1


def test_forgotten_principals_take_their_count_with_them() -> None:
    bound = RefusalBound(per_minute=0, total_per_minute=100, max_principals=2)
    for key in (ALICE, BOB, ("acme", "key:carol")):
        assert bound.admit(key, at(1)) is None
    # ALICE, least recently refused, was forgotten with her one suppressed refusal.
    assert bound.forgotten == 1
