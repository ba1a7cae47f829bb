"""Timed operations reported by capabilities and handed to whatever listens (metrics, logs).

Listeners run inline and must be cheap and never raise into the caller: an exception in one is
logged and dropped, so a broken exporter cannot fail an LLM call or a memory query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One timed operation: `kind` names the family ("llm_call", "memory_query"), `name` the
    operation within it ("generate", "embed", "search"), `labels` bounded-cardinality facts
    (provider, model; never ids), `outcome` "ok" or an error kind, `counts` quantities
    (prompt_tokens, completion_tokens, results)."""

    kind: str
    name: str
    duration_s: float
    outcome: str = "ok"
    labels: Mapping[str, str] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)


Listener = Callable[[Operation], None]
_listeners: list[Listener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call `listener` with every operation from now on; returns the function that stops it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def emit(operation: Operation) -> None:
    """Hand `operation` to every listener."""
    for listener in tuple(_listeners):
        try:
            listener(operation)
        except Exception:
            _log.exception("telemetry listener failed on %s/%s", operation.kind, operation.name)


class _Timing:
    """What a `timed` block fills in before it ends: its outcome, labels and counts."""

    __slots__ = ("counts", "labels", "outcome")

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.outcome = "ok"
        self.labels = dict(labels)
        self.counts: dict[str, int] = {}


@contextmanager
def timed(kind: str, name: str, **labels: str) -> Iterator[_Timing]:
    """Time the block and emit it; an exception sets the outcome to its class name (unless the
    block set one) and propagates."""
    timing = _Timing(labels)
    started = time.perf_counter()
    try:
        yield timing
    except BaseException as error:
        if timing.outcome == "ok":
            timing.outcome = type(error).__name__
        raise
    finally:
        if _listeners:
            emit(
                Operation(
                    kind=kind,
                    name=name,
                    duration_s=time.perf_counter() - started,
                    outcome=timing.outcome,
                    labels=timing.labels,
                    counts=timing.counts,
                )
            )
