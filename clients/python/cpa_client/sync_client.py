"""SyncSchedulerClient: SchedulerClient for code without asyncio, run on a private loop thread.

Each method is the async client's, run to completion on the client's own event loop (one
thread per client); iterators fetch item by item. So there is one implementation of every call
(errors, request ids, retries, watch resumption, batching: threads calling schedule_job at once
share batches as coroutines do), and nothing here to drift from it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from .scheduler_client import SchedulerClient

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _call(
    method: Callable[Concatenate[SchedulerClient, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[SyncSchedulerClient, _P], _R]:
    def call(self: SyncSchedulerClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self._run(method(self._client, *args, **kwargs))

    _named_as(call, method)
    return call


def _iterate(
    method: Callable[Concatenate[SchedulerClient, _P], AsyncIterator[_R]],
) -> Callable[Concatenate[SyncSchedulerClient, _P], Iterator[_R]]:
    def iterate(self: SyncSchedulerClient, /, *args: _P.args, **kwargs: _P.kwargs) -> Iterator[_R]:
        items = method(self._client, *args, **kwargs)

        async def step() -> tuple[bool, _R | None]:
            try:
                return True, await anext(items)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]  # an _R whenever `more`
        finally:
            # Stopped early (break, an error): end the stream on the loop, not by the collector.
            aclose = getattr(items, "aclose", None)
            if aclose is not None and not self._closed:
                self._run(aclose())

    _named_as(iterate, method)
    return iterate


def _named_as(wrapper: Callable[..., object], method: Callable[..., object]) -> None:
    """The wrapper shows the async method's name and documentation (help(), IDEs)."""
    wrapper.__name__ = method.__name__
    wrapper.__qualname__ = f"SyncSchedulerClient.{method.__name__}"
    wrapper.__doc__ = method.__doc__


class SyncSchedulerClient:
    """The blocking twin of SchedulerClient (same arguments, same methods); use as
    `with SyncSchedulerClient(target) as client:`. Safe to call from several threads."""

    def __init__(self, target: str, **settings: Any) -> None:
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cpa-client-loop", daemon=True
        )
        self._thread.start()

        async def make() -> SchedulerClient:
            return SchedulerClient(target, **settings)  # grpc.aio wants its loop running

        self._client = self._run(make())

    def _run(self, coroutine: Coroutine[Any, Any, _R]) -> _R:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> SyncSchedulerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._run(self._client.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def batches_sent(self) -> int:
        return self._client.batches_sent

    schedule_job = _call(SchedulerClient.schedule_job)
    batch_schedule_jobs = _call(SchedulerClient.batch_schedule_jobs)
    schedule_text = _call(SchedulerClient.schedule_text)
    schedule_intent = _call(SchedulerClient.schedule_intent)
    get_job = _call(SchedulerClient.get_job)
    list_jobs = _iterate(SchedulerClient.list_jobs)
    cancel_job = _call(SchedulerClient.cancel_job)
    retry_job = _call(SchedulerClient.retry_job)
    retry_jobs = _call(SchedulerClient.retry_jobs)
    watch_job = _iterate(SchedulerClient.watch_job)
    watch = _iterate(SchedulerClient.watch)
    list_artifacts = _call(SchedulerClient.list_artifacts)
    download_artifact = _call(SchedulerClient.download_artifact)
    read_artifact = _call(SchedulerClient.read_artifact)
    list_callbacks = _iterate(SchedulerClient.list_callbacks)
    retry_callbacks = _call(SchedulerClient.retry_callbacks)
    list_audit_entries = _iterate(SchedulerClient.list_audit_entries)
    send_message = _call(SchedulerClient.send_message)
    preview_plan = _call(SchedulerClient.preview_plan)
    search_memory = _call(SchedulerClient.search_memory)
    put_memory = _call(SchedulerClient.put_memory)
    delete_memories = _call(SchedulerClient.delete_memories)
    list_agents = _iterate(SchedulerClient.list_agents)
