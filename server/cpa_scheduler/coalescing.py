"""Coalescing: many small calls to a backend become one larger call.

Under load a replica makes the same kind of call (publish these events, queue these tasks, ack
these entries) for many jobs at once; each round trip costs far more CPU on the client than the
items it carries. A Coalescer gathers the items of the calls made during one event-loop
iteration, and while a flush is running, and hands them to one `flush` call as one list. Idle,
a call waits for nothing but the end of the current iteration; busy, batches grow by themselves.

Flushes run one at a time, in submission order: a caller that submits a then b finds a flushed
in the same or an earlier call than b (event order, for one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from .background import stop_tasks

log = logging.getLogger(__name__)

# How long close() waits for the flush under way.
CLOSE_TIMEOUT_S = 5.0

T = TypeVar("T")


class Coalescer(Generic[T]):
    """`submit(items)` returns a future that completes when the flush carrying the items has
    ended (with its error, if it raised). At most `max_calls` calls' items per flush."""

    def __init__(
        self, flush: Callable[[list[T]], Awaitable[None]], *, max_calls: int, name: str
    ) -> None:
        if max_calls <= 0:
            raise ValueError(f"max_calls must be positive, got {max_calls}")
        self._flush = flush
        self._max_calls = max_calls
        self._name = name
        self._calls: list[Sequence[T]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    def submit(self, items: Sequence[T]) -> asyncio.Future[None]:
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        future = asyncio.get_running_loop().create_future()
        self._calls.append(items)
        self._waiters.append(future)
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=self._name)
        return future

    async def _run(self) -> None:
        try:
            # One loop iteration passes before the first flush, so that the calls made in it
            # share the flush.
            await asyncio.sleep(0)
            while self._calls:
                calls, self._calls = self._calls[: self._max_calls], self._calls[self._max_calls :]
                waiters = self._waiters[: len(calls)]
                del self._waiters[: len(calls)]
                try:
                    await self._flush([item for call in calls for item in call])
                except asyncio.CancelledError:
                    for waiter in waiters:
                        waiter.cancel()
                    raise
                except Exception as error:  # each caller decides what a failure means
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(error)
                            # A caller that did not wait for the outcome must not be reported
                            # as "exception never retrieved"; the flush's caller logs it.
                            waiter.exception()
                else:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            self._runner = None
            for waiter in self._waiters:  # only when cancelled: the items were never flushed
                waiter.cancel()
            self._calls.clear()
            self._waiters.clear()

    async def close(self, *, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Flush what was submitted, then refuse new items. A flush still running after
        `timeout_s` (a backend that stopped answering) is cancelled, and so are its callers."""
        self._closed = True
        if self._runner is None:
            return
        runner = self._runner
        await asyncio.wait({runner}, timeout=timeout_s)
        if not runner.done():
            log.warning("%s: flush still running after %.1fs, cancelled", self._name, timeout_s)
            await stop_tasks([runner])
