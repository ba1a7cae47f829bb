"""Serving a service whose requests are decoded here rather than by gRPC.

gRPC answers a request body it cannot decode with UNKNOWN ("Unexpected DecodeError"; INTERNAL on
the agent stream) and logs a traceback per call. Bodies that protobuf refuses are bad input:
nested deeper than its 100-level decode limit (a JSON value a few levels past what the server
accepts anyway), or not protobuf at all. Decoded here, they are INVALID_ARGUMENT
(MALFORMED_MESSAGE) with one log line.

A decoded request (or a client stream's message) with U+0000 (NUL) in any string is
INVALID_ARGUMENT (INVALID_FIELD naming the field; proto_values.check_text; the strings and keys
of JSON values are refused alike where struct_to_dict converts them, in the servicer):
PostgreSQL's text cannot store NUL while SQLite can, and no caller text
the server keeps, looks up or forwards needs it. Checked here, before any servicer reads the
request, so the rule is the same for every RPC and both stores; except for the methods whose
servicer applies it itself (`own_text_check`): SendMessage answers a LAM message with NUL
NOT_UNDERSTOOD naming the field, as any other malformed one (lam.py), and the agent's Connect
checks message kind by message kind, never refusing a report for its text, which would lose the
attempt (convert.py).

A single request (unary or server-streaming RPC) larger than the server's budget
(CPA_MAX_REQUEST_BYTES) is INVALID_ARGUMENT (PAYLOAD_TOO_LARGE) before it is decoded, for every
method alike; the transport lets larger messages through so this check, not gRPC's own
RESOURCE_EXHAUSTED (which clients retry), answers them (server.py).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import grpc
import grpc.aio
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from cpa_scheduler.domain import InvalidArgument, Reason

from .errors import abort
from .proto_values import check_text

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


def _checked_text(request: Message, data: bytes) -> None:
    """check_text, skipped when no byte of the body is 0 (NUL is encoded as one)."""
    if b"\x00" in data:
        check_text(request)


async def _decode(
    request_type: type[Message],
    data: bytes,
    context: Context,
    rpc: str,
    max_bytes: int,
    text: bool,
) -> Any:
    """The request; with `text`, refused when a string holds NUL (see the module doc)."""
    if len(data) > max_bytes:
        await abort(context, _too_large(len(data), max_bytes))
    try:
        request = request_type.FromString(data)
    except DecodeError:
        await abort(context, _malformed(request_type, data, context, rpc))
    if text:
        try:
            _checked_text(request, data)
        except InvalidArgument as error:
            await abort(context, error)
    return request


def _unary_unary(
    behavior: Callable[[Any, Context], Any],
    request_type: type[Message],
    rpc: str,
    max_bytes: int,
    text: bool,
) -> Callable[[bytes, Context], Any]:
    async def handle(data: bytes, context: Context) -> Any:
        request = await _decode(request_type, data, context, rpc, max_bytes, text)
        return await behavior(request, context)

    return handle


def _unary_stream(
    behavior: Callable[[Any, Context], Any],
    request_type: type[Message],
    rpc: str,
    max_bytes: int,
    text: bool,
) -> Callable[[bytes, Context], Any]:
    if inspect.iscoroutinefunction(behavior):  # writes with context.write (WatchJob)

        async def write(data: bytes, context: Context) -> None:
            request = await _decode(request_type, data, context, rpc, max_bytes, text)
            await behavior(request, context)

        return write

    async def handle(data: bytes, context: Context) -> AsyncIterator[Any]:
        request = await _decode(request_type, data, context, rpc, max_bytes, text)
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
        *,
        text_checked: bool,
    ) -> None:
        self._raw = raw
        self._text_checked = text_checked
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
            if self._text_checked:
                try:
                    _checked_text(request, data)
                except InvalidArgument as error:
                    self.error = error
                    raise
            yield request


def _stream_stream(
    behavior: Callable[[Any, Context], AsyncIterator[Any]],
    request_type: type[Message],
    rpc: str,
    max_message_bytes: int,
    text: bool,
) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[Any]]:
    async def handle(raw: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        requests = _DecodedStream(
            raw, request_type, context, rpc, max_message_bytes, text_checked=text
        )
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
    text: bool,
) -> Callable[[AsyncIterator[bytes], Context], Any]:
    async def handle(raw: AsyncIterator[bytes], context: Context) -> Any:
        requests = _DecodedStream(
            raw, request_type, context, rpc, max_message_bytes, text_checked=text
        )
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
    own_text_check: Collection[str] = (),
) -> None:
    """Serve every method of `service` (unary, server-streaming or bidi) by the servicer's
    method of the same name, decoding each request here. A single request over
    `max_request_bytes`, or a client stream's message over `max_stream_message_bytes`, is
    refused with PAYLOAD_TOO_LARGE; one with NUL in a string, with INVALID_FIELD, except for
    the methods named in `own_text_check` (whose servicer answers NUL itself)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        serializer = _serializer(message_factory.GetMessageClass(method.output_type))
        behavior = getattr(servicer, method.name)
        rpc = f"{service.name}.{method.name}"
        text = method.name not in own_text_check
        if method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _stream_unary(behavior, request_type, rpc, max_stream_message_bytes, text),
                response_serializer=serializer,
            )
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _stream_stream(behavior, request_type, rpc, max_stream_message_bytes, text),
                response_serializer=serializer,
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _unary_stream(behavior, request_type, rpc, max_request_bytes, text),
                response_serializer=serializer,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary_unary(behavior, request_type, rpc, max_request_bytes, text),
                response_serializer=serializer,
            )
    # As the generated add_*_to_server does: registered methods skip a lookup per call (the
    # type stubs lag behind grpcio here).
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
