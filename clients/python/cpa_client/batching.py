"""Transparent batching of schedule_job: concurrent calls of one client within a short linger go
out as one BatchScheduleJobs, and each caller gets what its lone ScheduleJob would have got.

BatchScheduleJobs is all or none, so joining strangers' requests needs care:
  - a request refused inside the batch (the error's field is `requests[i]...`) fails only its
    caller, with the field re-rooted as a lone call names it (`spec...`); the others are sent
    again without it. Every request carries a request id (the SDK makes one when the caller
    gives none), and a refused batch created nothing, so sending again cannot create twice;
  - a failure that names no request (rate limit, quota, size of the whole batch, a connection
    lost) is not theirs to share: each request is then sent alone as ScheduleJob, so its caller
    gets a lone call's answer;
  - two calls with the same request id never share a batch (the server refuses that batch);
  - only calls asking for the same view share a batch (the view is the batch's, not the item's).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2

from .errors import CpaError, FieldViolation

# The default linger: long enough for concurrent callers to meet, short against an RPC's latency.
DEFAULT_LINGER_S = 0.002
# Well under the server's 1000 per batch; a refused item costs a resend of the rest, so smaller
# batches bound that cost.
DEFAULT_MAX_BATCH = 100

# Batches a client has in flight before later calls wait for one to return (a full batch goes
# anyway): the server writes one batch at a time, and concurrent batches cost it more than
# one larger batch (bench/bench_sdk_batching.py).
DEFAULT_MAX_IN_FLIGHT = 1

_ITEM_FIELD = re.compile(r"^requests\[(\d+)\]\.?")

View: TypeAlias = job_pb2.JobView.ValueType
Request: TypeAlias = scheduler_service_pb2.ScheduleJobRequest
Response: TypeAlias = scheduler_service_pb2.ScheduleJobResponse
SendBatch = Callable[[Sequence[Request], View], Awaitable[Sequence[Response]]]
SendOne = Callable[[Request], Awaitable[Response]]


@dataclass
class _Item:
    request: Request
    answer: asyncio.Future[Response]


@dataclass
class _Group:
    items: list[_Item] = field(default_factory=list)
    request_ids: set[str] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    # The linger passed; the group goes as soon as a batch in flight returns.
    ready: bool = False
    # Formed while callers of a returned batch come back: it goes as soon as it holds this
    # many, without waiting out its linger (0: no such wait).
    target: int = 0


def item_index(error: CpaError) -> int | None:
    """The batch position an error of BatchScheduleJobs names (`requests[3].spec...`), if any."""
    fields = [error.metadata.get("field", "")] + [v.field for v in error.field_violations]
    for name in fields:
        if match := _ITEM_FIELD.match(name):
            return int(match.group(1))
    return None


def as_lone_error(error: CpaError) -> CpaError:
    """The error re-rooted as ScheduleJob would name it: `requests[3].spec.x` -> `spec.x`."""

    def reroot(name: str) -> str:
        return _ITEM_FIELD.sub("", name, count=1)

    metadata = {k: reroot(v) if k == "field" else v for k, v in error.metadata.items()}
    violations = tuple(
        FieldViolation(reroot(v.field), v.description) for v in error.field_violations
    )
    return replace_error(error, metadata=metadata, field_violations=violations)


def replace_error(error: CpaError, **changes: object) -> CpaError:
    """A copy of `error` (a CpaError or subclass) with some attributes changed."""
    fields = {
        "code": error.code,
        "message": error.message,
        "reason": error.reason,
        "metadata": error.metadata,
        "field_violations": error.field_violations,
        "retry_delay_s": error.retry_delay_s,
    }
    fields.update(changes)
    return CpaError.of(**fields)  # type: ignore[arg-type]


class ScheduleBatcher:
    """Joins concurrent schedule requests into BatchScheduleJobs calls (see the module doc)."""

    def __init__(
        self,
        send_batch: SendBatch,
        send_one: SendOne,
        *,
        linger_s: float = DEFAULT_LINGER_S,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if linger_s <= 0 or max_batch < 2 or max_in_flight < 1:
            raise ValueError(
                "batching needs a positive linger, batches of at least 2 and 1 batch in flight"
            )
        self._send_batch = send_batch
        self._send_one = send_one
        self._linger_s = linger_s
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._groups: dict[View, _Group] = {}
        # Batches in flight, with their number of calls.
        self._flushes: dict[asyncio.Task[None], tuple[View, int]] = {}
        # Callers of a returned batch of this view, for a group formed within a linger of its
        # return to wait for: (how many, until when).
        self._answered: dict[View, tuple[int, float]] = {}
        # Counts of what went out, for tests and benchmarks.
        self.batches_sent = 0

    async def schedule(self, request: Request, view: View) -> Response:
        loop = asyncio.get_running_loop()
        group = self._groups.get(view)
        if group is not None and request.request_id in group.request_ids:
            self._flush(view)  # the same id twice in one batch is refused: split here
            group = None
        if group is None:
            answered, until = self._answered.pop(view, (0, 0.0))
            group = self._groups[view] = _Group(target=answered if loop.time() <= until else 0)
            group.timer = loop.call_later(self._linger_s, self._linger_over, view)
        item = _Item(request, loop.create_future())
        group.items.append(item)
        group.request_ids.add(request.request_id)
        if len(group.items) >= self._max_batch or (
            0 < group.target <= len(group.items) and len(self._flushes) < self._max_in_flight
        ):
            self._flush(view)
        # shield: a caller that gives up leaves the others' batch alone (its job may still be
        # created, as when a lone call is cancelled after it was sent).
        return await asyncio.shield(item.answer)

    def _linger_over(self, view: View) -> None:
        group = self._groups.get(view)
        if group is None:
            return
        group.ready = True
        if len(self._flushes) < self._max_in_flight:
            self._flush(view)

    def _sent(self, task: asyncio.Task[None]) -> None:
        returned_view, answered = self._flushes.pop(task)
        # Calls that came while the server was busy with the last batch wait for the callers
        # just answered to join them: else a few stragglers would go alone and every other
        # batch would be a tiny one (measured: half the throughput). They wait one more linger
        # at most, and no longer than it takes those callers to come back (callers in step, as
        # a loop of submissions: the linger would be idle time between batches).
        loop = asyncio.get_running_loop()
        for view, group in self._groups.items():
            if group.ready:
                group.ready = False
                if view == returned_view:
                    group.target = len(group.items) + answered
                if group.timer is not None:
                    group.timer.cancel()
                group.timer = loop.call_later(self._linger_s, self._linger_over, view)
        if returned_view not in self._groups:
            self._answered[returned_view] = (answered, loop.time() + self._linger_s)

    def _flush(self, view: View) -> None:
        group = self._groups.pop(view, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._send(group.items, view))
        self._flushes[task] = (view, len(group.items))
        task.add_done_callback(self._sent)

    async def _send(self, items: list[_Item], view: View) -> None:
        try:
            while len(items) > 1:
                try:
                    self.batches_sent += 1
                    responses = await self._send_batch([i.request for i in items], view)
                except CpaError as error:
                    index = item_index(error)
                    if index is None or index >= len(items):
                        break  # not one request's fault: each goes alone below
                    _settle(items.pop(index), error=as_lone_error(error))
                    continue
                for item, response in zip(items, responses, strict=True):
                    _settle(item, response=response)
                return
            await asyncio.gather(*(self._alone(item, view) for item in items))
        except BaseException as error:  # a bug or cancellation: no caller may hang
            for item in items:
                _settle(item, error=error)
            raise

    async def _alone(self, item: _Item, view: View) -> None:
        request = Request()
        request.CopyFrom(item.request)
        request.view = view
        try:
            _settle(item, response=await self._send_one(request))
        except CpaError as error:
            _settle(item, error=error)

    async def close(self) -> None:
        """Sends what is waiting and waits for every batch in flight."""
        for view in list(self._groups):
            self._flush(view)
        with contextlib.suppress(Exception):
            await asyncio.gather(*list(self._flushes), return_exceptions=True)


def _settle(
    item: _Item, *, response: Response | None = None, error: BaseException | None = None
) -> None:
    if item.answer.done():
        return
    if isinstance(error, asyncio.CancelledError):
        item.answer.cancel()
    elif error is not None:
        item.answer.set_exception(error)
    else:
        assert response is not None
        item.answer.set_result(response)
