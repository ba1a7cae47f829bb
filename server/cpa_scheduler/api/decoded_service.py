"""Serving a service whose requests are decoded here rather than by gRPC.

gRPC answers a request body it cannot decode with UNKNOWN ("Unexpected DecodeError") and logs a
traceback per call. Bodies that protobuf refuses are bad input: nested deeper than its 100-level
decode limit (a JSON value a few levels past what the server accepts anyway), or not protobuf at
all. Decoded here, they are INVALID_ARGUMENT (MALFORMED_MESSAGE) with one log line.
"""

from __future__ import annotations

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


async def _decode(request_type: type[Message], data: bytes, context: Context, rpc: str) -> Any:
    try:
        return request_type.FromString(data)
    except DecodeError:
        log.warning(
            "%s from %s: %d bytes that are no %s (not protobuf, or nested too deep); refused",
            rpc,
            context.peer(),
            len(data),
            request_type.DESCRIPTOR.name,
        )
        await abort(
            context,
            InvalidArgument(
                f"the request is not a valid {request_type.DESCRIPTOR.name}: not protobuf, or "
                "nested deeper than protobuf decodes (100 levels)",
                reason=Reason.MALFORMED_MESSAGE,
            ),
        )


def _unary_unary(
    behavior: Callable[[Any, Context], Any], request_type: type[Message], rpc: str
) -> Callable[[bytes, Context], Any]:
    async def handle(data: bytes, context: Context) -> Any:
        return await behavior(await _decode(request_type, data, context, rpc), context)

    return handle


def _unary_stream(
    behavior: Callable[[Any, Context], AsyncIterator[Any]], request_type: type[Message], rpc: str
) -> Callable[[bytes, Context], AsyncIterator[Any]]:
    async def handle(data: bytes, context: Context) -> AsyncIterator[Any]:
        async for response in behavior(await _decode(request_type, data, context, rpc), context):
            yield response

    return handle


def add_decoded_service(
    servicer: object, service: ServiceDescriptor, server: grpc.aio.Server
) -> None:
    """Serve every method of `service` (unary or server-streaming) by the servicer's method of
    the same name, decoding each request here."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        serializer = message_factory.GetMessageClass(method.output_type).SerializeToString
        behavior = getattr(servicer, method.name)
        rpc = f"{service.name}.{method.name}"
        if method.client_streaming:
            raise ValueError(f"{rpc}: client streams are not decoded here")
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _unary_stream(behavior, request_type, rpc), response_serializer=serializer
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary_unary(behavior, request_type, rpc), response_serializer=serializer
            )
    # As the generated add_*_to_server does: registered methods skip a lookup per call (the
    # type stubs lag behind grpcio here).
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
