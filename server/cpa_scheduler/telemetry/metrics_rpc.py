"""RPC metrics: an interceptor counting each gRPC call by method and status code, and timing it.

Outside the call limit, authentication and the rate limiter (server.py): a call they refuse
(RESOURCE_EXHAUSTED, UNAUTHENTICATED, PERMISSION_DENIED) is counted with its code like any
other, which is what an operator watching refusals climb needs. The handler it gets is then
the one those interceptors made for this call, so it wraps per call (a closure and a handler
tuple, as each of them does), not once per method.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from cpa_scheduler.api.interceptors import Behavior, Context, Handler, rewrap

from . import metrics

if TYPE_CHECKING:  # generic in the stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


def _code(context: Context, default: grpc.StatusCode) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return default.name if code is None else str(code)


def _measured(behavior: Behavior, method: str) -> Behavior:
    def done(context: Context, started: float, default: grpc.StatusCode) -> None:
        metrics.RPC_REQUESTS.inc(method, _code(context, default))
        metrics.RPC_DURATION.observe(time.perf_counter() - started, method)

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            started, outcome = time.perf_counter(), grpc.StatusCode.UNKNOWN
            try:
                async for response in behavior(request, context):
                    yield response
                outcome = grpc.StatusCode.OK
            except BaseException as error:
                if isinstance(error, GeneratorExit):
                    outcome = grpc.StatusCode.CANCELLED
                raise
            finally:
                done(context, started, outcome)

        return stream

    async def call(request: Any, context: Context) -> Any:
        started, outcome = time.perf_counter(), grpc.StatusCode.UNKNOWN
        try:
            result = await behavior(request, context)
            outcome = grpc.StatusCode.OK
            return result
        finally:
            done(context, started, outcome)

    return call


class RpcMetrics(_Interceptor):
    """Counts and times every call (rpc_requests_total, rpc_duration_seconds)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or not metrics.ENABLED:
            return handler  # type: ignore[return-value]  # None: UNIMPLEMENTED (stubs lack it)
        method = metrics.methods(handler_call_details.method)
        return rewrap(handler, lambda behavior: _measured(behavior, method))
