"""Serving a service whose requests are decoded here rather than by gRPC.

gRPC answers a request body it cannot decode with UNKNOWN ("Unexpected DecodeError"; INTERNAL on
the agent stream) and logs a traceback per call. Bodies that protobuf refuses are bad input:
nested deeper than its 100-level decode limit (a JSON value a few levels past what the server
accepts anyway), or not protobuf at all. Decoded here, they are INVALID_ARGUMENT
(MALFORMED_MESSAGE) with one log line.

A single request (unary or server-streaming RPC) larger than the server's budget
(CPA_MAX_REQUEST_BYTES) is INVALID_ARGUMENT (PAYLOAD_TOO_LARGE) before it is decoded, for every
method alike; the transport lets larger messages through so this check, not gRPC's own
RESOURCE_EXHAUSTED (which clients retry), answers them (server.py).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from cpa_scheduler.domain import InvalidArgument, Reason

from .errors import abort

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


def _malformed(
    request_type: type[Message], data: bytes, context: Context, rpc: str
) -> InvalidArgument:
    """Logs the one line for an undecodable body; the error to answer it with."""
    log.warning(
        "%s from %s: %d bytes that are no %s (not protobuf, or nested too deep); refused",
        rpc,
        context.peer(),
        len(data),
        request_type.DESCRIPTOR.name,
    )
    return InvalidArgument(
        f"the request is not a valid {request_type.DESCRIPTOR.name}: not protobuf, or "
        "nested deeper than protobuf decodes (100 levels)",
        reason=Reason.MALFORMED_MESSAGE,
    )


def _too_large(size: int, max_bytes: int) -> InvalidArgument:
    return InvalidArgument(
        f"request is {size} bytes; the limit is {max_bytes}", reason=Reason.PAYLOAD_TOO_LARGE
    )


async def _decode(
    request_type: type[Message], data: bytes, context: Context, rpc: str, max_bytes: int
) -> Any:
    if len(data) > max_bytes:
        await abort(context, _too_large(len(data), max_bytes))
    try:
        return request_type.FromString(data)
    except DecodeError:
        await abort(context, _malformed(request_type, data, context, rpc))


def _unary_unary(
    behavior: Callable[[Any, Context], Any], request_type: type[Message], rpc: str, max_bytes: int
) -> Callable[[bytes, Context], Any]:
    async def handle(data: bytes, context: Context) -> Any:
        return await behavior(await _decode(request_type, data, context, rpc, max_bytes), context)

    return handle


def _unary_stream(
    behavior: Callable[[Any, Context], Any], request_type: type[Message], rpc: str, max_bytes: int
) -> Callable[[bytes, Context], Any]:
    if inspect.iscoroutinefunction(behavior):  # writes with context.write (WatchJob)

        async def write(data: bytes, context: Context) -> None:
            await behavior(await _decode(request_type, data, context, rpc, max_bytes), context)

        return write

    async def handle(data: bytes, context: Context) -> AsyncIterator[Any]:
        request = await _decode(request_type, data, context, rpc, max_bytes)
        async for response in behavior(request, context):
            yield response

    return handle


class _DecodedStream:
    """A client stream's requests decoded here. An undecodable one raises its InvalidArgument to
    whoever iterates (in a bidi handler, often a reader task of its own) and is kept in `error`,
    so the call ends with it once the handler returns (see _stream_stream)."""

    def __init__(
        self,
        raw: AsyncIterator[bytes],
        request_type: type[Message],
        context: Context,
        rpc: str,
        max_bytes: int,
    ) -> None:
        self._raw = raw
        self._max_bytes = max_bytes
        self._request_type = request_type
        self._context = context
        self._rpc = rpc
        self.error: InvalidArgument | None = None

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for data in self._raw:
            if len(data) > self._max_bytes:
                self.error = _too_large(len(data), self._max_bytes)
                raise self.error
            try:
                request = self._request_type.FromString(data)
            except DecodeError:
                self.error = _malformed(self._request_type, data, self._context, self._rpc)
                raise self.error from None
            yield request


def _stream_stream(
    behavior: Callable[[Any, Context], AsyncIterator[Any]],
    request_type: type[Message],
    rpc: str,
    max_message_bytes: int,
) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[Any]]:
    async def handle(raw: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        requests = _DecodedStream(raw, request_type, context, rpc, max_message_bytes)
        async for response in behavior(requests, context):
            yield response
        if requests.error is not None:
            # The handler ended because its requests did (a reader that stops on any error
            # ends its stream cleanly): the call still says why.
            await abort(context, requests.error)

    return handle


def _stream_unary(
    behavior: Callable[[Any, Context], Any],
    request_type: type[Message],
    rpc: str,
    max_message_bytes: int,
) -> Callable[[AsyncIterator[bytes], Context], Any]:
    async def handle(raw: AsyncIterator[bytes], context: Context) -> Any:
        requests = _DecodedStream(raw, request_type, context, rpc, max_message_bytes)
        # An undecodable request raises its InvalidArgument inside the handler, which answers
        # it as any DomainError (translate_errors).
        return await behavior(requests, context)

    return handle


def _serializer(message_type: type[Message]) -> Callable[[Any], bytes]:
    """Serializes a response, or passes one serialized already (WatchJob encodes each event
    once for all its watchers) through as is."""
    serialize = message_type.SerializeToString

    def serializer(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return serializer


def add_decoded_service(
    servicer: object,
    service: ServiceDescriptor,
    server: grpc.aio.Server,
    *,
    max_request_bytes: int,
    max_stream_message_bytes: int,
) -> None:
    """Serve every method of `service` (unary, server-streaming or bidi) by the servicer's
    method of the same name, decoding each request here. A single request over
    `max_request_bytes`, or a client stream's message over `max_stream_message_bytes`, is
    refused with PAYLOAD_TOO_LARGE."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        serializer = _serializer(message_factory.GetMessageClass(method.output_type))
        behavior = getattr(servicer, method.name)
        rpc = f"{service.name}.{method.name}"
        if method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _stream_unary(behavior, request_type, rpc, max_stream_message_bytes),
                response_serializer=serializer,
            )
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _stream_stream(behavior, request_type, rpc, max_stream_message_bytes),
                response_serializer=serializer,
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _unary_stream(behavior, request_type, rpc, max_request_bytes),
                response_serializer=serializer,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary_unary(behavior, request_type, rpc, max_request_bytes),
                response_serializer=serializer,
            )
    # As the generated add_*_to_server does: registered methods skip a lookup per call (the
    # type stubs lag behind grpcio here).
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
