"""The bound on calls in progress at once on one replica, refused loudly beyond it.

grpc.aio's own `maximum_concurrent_rpcs` refuses with RESOURCE_EXHAUSTED but logs nothing and
carries no reason; this interceptor counts every call of every service (agent streams and
WatchJob streams for their whole life) and refuses the ones beyond the limit with
RESOURCE_EXHAUSTED / TOO_MANY_CALLS and a warning, at most one per LOG_INTERVAL_S, that says how
many were refused since the last one.

Bursts are a second, lower layer: gRPC core holds calls that arrived but that the server has not
taken yet in a queue whose default bound (1 000, and a hard 3 000) made it cancel a burst of
5 000 opens with a bare CANCELLED. server.py sizes it from settings.max_pending_rpcs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from cpa_scheduler.domain import DomainError, Reason

from .errors import abort
from .interceptors import Context, Handler, around, rewrap

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0

if TYPE_CHECKING:  # generic in the stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class CallLimit(_Interceptor):
    """Counts the calls in progress; beyond `maximum`, a call ends at once, refused."""

    def __init__(self, maximum: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = maximum
        self.active = 0
        self._clock = clock
        self._refused_since_log = 0
        self._last_log: float | None = None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:
            # An unknown method: gRPC answers UNIMPLEMENTED (the stubs do not admit None).
            return None  # type: ignore[return-value]
        method = str(handler_call_details.method)

        async def enter(context: Context) -> None:
            await self._enter(context, method)

        return rewrap(handler, lambda behavior: around(behavior, enter, self._leave))

    def _leave(self) -> None:
        self.active -= 1

    async def _enter(self, context: Context, method: str) -> None:
        if self.active < self.maximum:
            self.active += 1
            return
        self._note_refusal(method)
        await abort(
            context,
            DomainError(
                f"this server has {self.maximum} calls in progress, its limit; retry later "
                "with backoff, or against another replica",
                reason=Reason.TOO_MANY_CALLS,
            ),
        )

    def _note_refusal(self, method: str) -> None:
        self._refused_since_log += 1
        now = self._clock()
        if self._last_log is not None and now - self._last_log < LOG_INTERVAL_S:
            return
        log.warning(
            "refused %d calls over the limit of %d calls in progress (CPA_MAX_CONCURRENT_RPCS) "
            "since the last report; latest: %s",
            self._refused_since_log,
            self.maximum,
            method,
        )
        self._refused_since_log = 0
        self._last_log = now
