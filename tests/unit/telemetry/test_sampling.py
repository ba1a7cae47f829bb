"""A caller's sampling decision, read from its W3C traceparent before any span is made
(cpa_client.telemetry.sampled; the scheduler's RPC filter uses it)."""

from __future__ import annotations

import pytest

from cpa_client import telemetry

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (TRACEPARENT, True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03", True),  # random flag too
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02", False),
        ("garbage", False),
        ("00-x-y-zz", False),
        ("", False),
    ],
)
def test_a_callers_sampled_flag_is_read_from_its_traceparent(
    traceparent: str, expected: bool
) -> None:
    assert telemetry.sampled(traceparent) is expected
