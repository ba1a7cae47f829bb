"""A job's events that survive disconnects: WatchJob again from after the last event seen.

The server numbers a job's events 1, 2, 3... and replays stored ones after `after_sequence`, so
resuming from the last sequence yielded gives no gap; an event at or below it (a replica that
replays more) is dropped, so none is yielded twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from cpa.scheduler.v1 import job_event_pb2

from .errors import CpaError


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How watch() reconnects: backoff from `initial_s` doubling to `max_s` (with jitter), giving
    up when no event came for `give_up_s` while reconnecting (None: never)."""

    initial_s: float = 0.05
    max_s: float = 2.0
    give_up_s: float | None = 300.0


# Codes of a lost connection or a stopping replica (not of the request): worth watching again.
# INTERNAL without a reason is gRPC's own (a reset stream), never the scheduler's.
def _resumable(error: CpaError) -> bool:
    if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
        return True
    return error.code == grpc.StatusCode.INTERNAL and not error.reason


async def resuming_watch(
    open_stream: Callable[[int], AsyncIterator[job_event_pb2.JobEvent]],
    *,
    after_sequence: int,
    reconnect: Reconnect,
    on_reconnect: Callable[[int], None] | None = None,
) -> AsyncIterator[job_event_pb2.JobEvent]:
    """Events of `open_stream(after)` (one WatchJob) until the terminal one, reopened from the
    last sequence after a disconnect or a stream that ended early."""
    last = after_sequence
    delay = reconnect.initial_s
    failing_since: float | None = None
    while True:
        try:
            async for event in open_stream(last):
                if event.sequence <= last:
                    continue
                last = event.sequence
                delay, failing_since = reconnect.initial_s, None
                yield event
                if event.terminal:
                    return
        except CpaError as error:
            if not _resumable(error):
                raise
            now = time.monotonic()
            failing_since = failing_since if failing_since is not None else now
            if reconnect.give_up_s is not None and now - failing_since > reconnect.give_up_s:
                raise
        # Reached on a lost connection, and when a stream ended without the terminal event
        # (a replica stopping): back off, then ask again from the last event seen.
        if on_reconnect is not None:
            on_reconnect(last)
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: watchers spread out
        delay = min(delay * 2, reconnect.max_s)
