"""What the server's interceptors share: a method handler with its behavior wrapped, of the same
kind (unary or streaming either way), and a behavior run after an async admission step.

grpc.aio interceptors get the handler gRPC would call and return the one to call instead; the
handler kinds and the two shapes of a streaming behavior (an async generator, or a coroutine
that writes on the context) are handled here once.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

if TYPE_CHECKING:  # generic in the stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    Context = grpc.aio.ServicerContext

Behavior = Callable[[Any, Context], Any]


def rewrap(handler: Handler, wrap: Callable[[Behavior], Behavior]) -> Handler:
    """`handler` with its behavior replaced by `wrap(behavior)`, its (de)serializers kept."""
    # The stubs type each behavior by its own (sync) signature; ours are async.
    kinds: tuple[tuple[Any, Any], ...] = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    )
    for behavior, make in kinds:
        if behavior is not None:
            return make(  # type: ignore[no-any-return]
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise ValueError(f"a method handler without behavior: {handler!r}")


def around(
    behavior: Behavior,
    enter: Callable[[Context], Awaitable[None]],
    leave: Callable[[], None] | None = None,
) -> Behavior:
    """`behavior`, after `await enter(context)` (which may abort the call) and, once `enter`
    returned, followed by `leave()` however the call ends. Runs in the call's own task, so
    context variables `enter` sets are seen by the behavior."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await enter(context)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                if leave is not None:
                    leave()

        return stream

    async def call(request: Any, context: Context) -> Any:
        await enter(context)
        try:
            return await behavior(request, context)
        finally:
            if leave is not None:
                leave()

    return call
