"""Helpers for the background tasks of a replica (loops that run until they are cancelled).

They exist because of two pitfalls that bite such loops:

* redis-py can lose a cancel that lands while a command runs (redis/redis-py#2028, still so in
  8.1): one `task.cancel()` may leave a loop running, so `stop_tasks` cancels again until the
  tasks end.
* On Python 3.11, `asyncio.wait_for` can swallow a cancel that arrives just as its wait times
  out, so a loop waiting that way may never notice it was cancelled; `wait_event` uses
  `asyncio.timeout` instead.

`Backoff` is the retry delay of loops that keep going while a backend fails. No Redis here:
cpa_scheduler.redis_support builds on these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Background tasks retry a failing backend with exponential backoff between these bounds.
RETRY_DELAY_MIN_S = 0.1
RETRY_DELAY_MAX_S = 5.0
# How long stop_tasks waits for the tasks to end before it cancels them again.
_CANCEL_AGAIN_AFTER_S = 0.02


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], *, timeout_s: float | None = None) -> None:
    """Cancel `tasks` until they end (one cancel may be lost, see above). With `timeout_s`, give
    up after that long and log the tasks that did not stop; without, wait as long as it takes.
    The outcome of every task that ended is collected (never raised)."""
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while pending := [task for task in tasks if not task.done()]:
        if deadline is not None and loop.time() >= deadline:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=_CANCEL_AGAIN_AFTER_S)
    for task in tasks:
        if not task.done():
            log.error("background task %s did not stop", task.get_name())
    await asyncio.gather(*(task for task in tasks if task.done()), return_exceptions=True)


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Until `event` is set or `timeout_s` passed. Not asyncio.wait_for: on Python 3.11 it can
    swallow a cancel that arrives as the wait times out, and stopping the caller would hang."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


@dataclass(slots=True)
class Backoff:
    """The exponential retry delay of a background loop: `delay_s` is the next wait, `take()`
    returns it and doubles it (up to `max_s`), `reset()` after a success."""

    min_s: float = RETRY_DELAY_MIN_S
    max_s: float = RETRY_DELAY_MAX_S
    delay_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.delay_s = self.min_s

    def reset(self) -> None:
        self.delay_s = self.min_s

    def take(self) -> float:
        delay_s = self.delay_s
        self.delay_s = min(delay_s * 2, self.max_s)
        return delay_s
