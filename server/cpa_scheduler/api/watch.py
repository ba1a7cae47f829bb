"""WatchJob: replay a job's stored events after a sequence, follow it live, end at its terminal
event — without holding up the agents' streams that share the event loop.

Every write takes a turn of the replica's fan-out (events/fanout.py: a bounded number per loop
iteration); live events are encoded once for all their watchers and handed to gRPC as bytes
(api/decoded_service.py's serializer passes bytes through). A
watcher that reads slowly has its progress events coalesced, and past its buffer re-reads the
store from the last event it delivered, progress coalesced the same way (the first read, a
replay the caller asked for with after_sequence, is in full).

A watch with nothing to send for CPA_WATCH_HEARTBEAT_S gets a heartbeat (a WatchJobResponse
without event), so proxies in between do not close it as idle. One timer per stream checks
when the watcher last sent something; events themselves cost nothing extra.

An error once the stream has begun (the caller's credential ended, the store went away) is
written as the stream's last message (WatchJobResponse.error) before the call ends with it:
REST callers, who see no trailers, learn why. Before the first message an error stays the
call's status alone, so the gateway answers it with its HTTP status (404, 401...).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
from google.rpc import status_pb2

from cpa.scheduler.v1 import scheduler_service_pb2 as pb
from cpa_scheduler.domain import DomainError, InvalidArgument, Reason
from cpa_scheduler.events import EventBus, Heartbeat, Subscription, superseded_progress
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.settings import Settings

from . import convert
from .errors import end_stream_with
from .ids import required_id

Context = grpc.aio.ServicerContext[Any, Any]

# Events read from the store per query while replaying a job's history.
REPLAY_BATCH = 500


class _ClientGoneError(Exception):
    """The client cancelled the call while a write was under way."""


def _last_response(status: status_pb2.Status) -> pb.WatchJobResponse:
    return pb.WatchJobResponse(error=status)


class _HeartbeatTimer:
    """Asks `subscription` for a heartbeat whenever it has been quiet for `interval_s`: one
    loop timer per stream, re-armed for the moment the watcher may next be quiet."""

    def __init__(self, subscription: Subscription, interval_s: float) -> None:
        self._subscription = subscription
        self._interval_s = interval_s
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(interval_s, self._tick)

    def _tick(self) -> None:
        at = self._subscription.heartbeat_if_quiet(self._interval_s)
        self._handle = self._loop.call_later(max(0.0, at - time.monotonic()), self._tick)

    def cancel(self) -> None:
        self._handle.cancel()


class JobWatch:
    """Serves WatchJob streams of this replica (see the module's doc)."""

    def __init__(self, *, orchestrator: Orchestrator, bus: EventBus, settings: Settings) -> None:
        self._orchestrator = orchestrator
        self._bus = bus
        self._settings = settings

    def _admit(self, tenant: str) -> None:
        watchers = self._bus.watchers
        if watchers.count >= self._settings.max_watchers_per_replica:
            raise DomainError(
                f"this replica serves {watchers.count} WatchJob streams, its limit; "
                "retry later or on another replica",
                reason=Reason.TOO_MANY_WATCHERS,
            )
        if watchers.count_of(tenant) >= self._settings.max_watchers_per_tenant:
            raise DomainError(
                f"the tenant has {watchers.count_of(tenant)} WatchJob streams open on this "
                "replica, its limit; close some or retry later",
                reason=Reason.TOO_MANY_WATCHERS,
            )

    async def watch(
        self,
        request: pb.WatchJobRequest,
        tenant: str,
        context: Context,
        *,
        until: contextlib.AbstractAsyncContextManager[None] | None = None,
    ) -> None:
        """Writes the job's events after `request.after_sequence`, then live ones, and returns
        after the terminal event (at once if the job ended at or before after_sequence).
        `until` (the caller's credential, credential_watch.py) may end the stream earlier by
        raising its error."""
        job_id = required_id(request.job_id, "job_id")
        if request.after_sequence < 0:
            raise InvalidArgument(
                f"after_sequence must not be negative, got {request.after_sequence}",
                field="after_sequence",
            )
        self._admit(tenant)
        # Subscribe before reading the store, so nothing falls between the two.
        subscription = self._bus.subscribe(tenant, job_id)
        interval_s = self._settings.watch_heartbeat_s
        heartbeats = _HeartbeatTimer(subscription, interval_s) if interval_s > 0 else None
        began = False

        async def write(data: bytes) -> None:
            nonlocal began
            try:
                await context.write(data)
            except Exception:
                if context.cancelled():
                    raise _ClientGoneError from None
                raise
            began = True

        try:
            async with until or contextlib.nullcontext():
                await self._follow(subscription, tenant, job_id, request.after_sequence, write)
        except _ClientGoneError:
            return  # nobody to tell: a write failed because the client cancelled the call
        except Exception as error:
            if not began:
                raise
            await end_stream_with(
                context, error, where=f"{__name__}.JobWatch.watch", last=_last_response
            )
        finally:
            if heartbeats is not None:
                heartbeats.cancel()
            subscription.close()

    async def _follow(
        self,
        subscription: Subscription,
        tenant: str,
        job_id: str,
        last: int,
        write: Callable[[bytes], Awaitable[None]],
    ) -> None:
        encode: Callable[[Any], bytes] = convert.watch_response_bytes
        first_read = True
        while True:
            # The first read replays the history in full; later ones (the watcher fell behind
            # the live log) coalesce progress as the live log does.
            ended, last, wrote = await self._replay(
                tenant, job_id, last, write, coalesce=not first_read
            )
            if ended:
                return
            if first_read and not wrote:
                job = await self._orchestrator.get_job(tenant, job_id)  # NOT_FOUND if none
                if job.is_terminal and last >= job.last_event_sequence:
                    return
            first_read = False
            subscription.resume_after(last)
            while (live := await subscription.next()) is not None:
                if isinstance(live, Heartbeat):
                    try:
                        await write(convert.heartbeat_response_bytes(datetime.now(UTC)))
                    finally:
                        subscription.written()
                    continue
                event = live.event
                try:
                    await write(live.encoded(encode))
                finally:
                    subscription.written()
                last = event.sequence
                if event.terminal:
                    return
            # None: the buffer overflowed or events were lost: the store has them all.

    async def _replay(
        self,
        tenant: str,
        job_id: str,
        last: int,
        write: Callable[[Any], Any],
        *,
        coalesce: bool,
    ) -> tuple[bool, int, bool]:
        """Writes the stored events after `last` (with `coalesce`, not the progress events a
        later one of the same task in the same read supersedes); returns (the newest was
        terminal, the last sequence read, whether any was written). Each write takes a turn of
        the fan-out."""
        fanout = self._bus.watchers.fanout
        wrote = terminal = False
        while True:
            events = await self._orchestrator.list_events(
                tenant, job_id, after_sequence=last, limit=REPLAY_BATCH
            )
            skip = superseded_progress(events) if coalesce else ()
            for index, event in enumerate(events):
                if index in skip:
                    last = event.sequence
                    continue
                turn = await fanout.turn()
                try:
                    await write(convert.watch_response_bytes(event))
                finally:
                    fanout.done(turn)
                last, wrote, terminal = event.sequence, True, event.terminal
            if len(events) < REPLAY_BATCH:
                # Only the newest event ends the stream: a re-driven job has older terminals.
                return terminal, last, wrote
