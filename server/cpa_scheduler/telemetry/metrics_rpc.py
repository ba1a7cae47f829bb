"""RPC metrics: an interceptor counting each gRPC call by method and status code, and timing it.

Innermost: the handler it gets is the service's own, the same object every call, so its
wrapped handler is cached per method and the call path pays a dict lookup. (Outermost it would
rewrap per call, as the call limit and the rate limiter wrap theirs per call.) Calls those
interceptors refuse are therefore not counted here; they log and audit their refusals.
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
        metrics.rpc_requests(method, _code(context, default)).inc()
        metrics.rpc_duration(method).observe(time.perf_counter() - started)

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

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or not metrics.ENABLED:
            return handler  # type: ignore[return-value]  # None: UNIMPLEMENTED (stubs lack it)
        name = handler_call_details.method
        cached = self._wrapped.get(name)
        if cached is not None and cached[0] is handler:
            return cached[1]
        method = metrics.methods(name)
        wrapped = rewrap(handler, lambda behavior: _measured(behavior, method))
        self._wrapped[name] = (handler, wrapped)
        return wrapped
