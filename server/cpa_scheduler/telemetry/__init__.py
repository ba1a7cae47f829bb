"""Telemetry: what the scheduler measures of itself and where it goes (metrics, traces, logs).

`hooks` is the seam: capabilities (LLM calls, memory queries…) report timed operations there,
and exporters subscribe, so neither side imports the other.
"""

from __future__ import annotations

from .hooks import Operation, emit, subscribe, timed

__all__ = ["Operation", "emit", "subscribe", "timed"]
