"""Domain errors on the wire: codes, rich status details and the servicer decorator.

Calls go through a real grpc.aio server on loopback and are decoded by the SDK's CpaError,
so the encoding is tested the way clients read it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2, status_pb2

from cpa_client.errors import CpaError, FieldViolation
from cpa_scheduler.api.errors import (
    ERROR_DOMAIN,
    REASON_CODE_OVERRIDES,
    REASON_CODES,
    STATUS_DETAILS_KEY,
    retry_after_header,
    status_code_for,
    status_for,
    translate_errors,
)
from cpa_scheduler.api.list_filter import parse_job_filter
from cpa_scheduler.domain import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    Reason,
)

API_STYLE = Path(__file__).resolve().parents[3] / "docs" / "API_STYLE.md"
SERVICE = "cpa.test.v1.ErrorsTestService"
SECRET = "postgresql://scheduler:hunter2@db/jobs"

# Errors the test service raises, chosen by the request bytes.
RAISED: dict[str, Callable[[], Exception]] = {
    "unknown-dependency": lambda: InvalidArgument(
        "task 'mail' depends on unknown task 'pdf'",
        reason=Reason.UNKNOWN_DEPENDENCY,
        field="spec.todos.todos[1].depends_on[0]",
    ),
    "job-not-found": lambda: NotFound("job 'j-1' not found"),
    "illegal-transition": lambda: FailedPrecondition(
        "job cannot go from SUCCEEDED to CANCELLED", field="job_id"
    ),
    "bad-filter": lambda: _filter_error("stat = FAILED"),
    "unexpected": lambda: RuntimeError(f"connection to {SECRET} refused"),
}


def _filter_error(text: str) -> InvalidArgument:
    try:
        parse_job_filter(text)
    except InvalidArgument as error:
        return error
    raise AssertionError(f"{text!r} parsed")


@translate_errors
async def _unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    scenario = request.decode()
    if scenario == "ok":
        return b"fine"
    if scenario == "own-abort":
        await context.abort(grpc.StatusCode.ABORTED, "busy, try again")
    if scenario == "with-trailers":
        context.set_trailing_metadata((("x-request-id", "req-42"),))
        raise NotFound("job 'j-2' not found")
    raise RAISED[scenario]()


@translate_errors
async def _stream(
    request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    yield b"first"
    scenario = request.decode()
    if scenario == "ok":
        yield b"second"
        return
    raise RAISED[scenario]()


_HANDLER = grpc.method_handlers_generic_handler(
    SERVICE,
    {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    },
)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_HANDLER,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client_channel:
            yield client_channel
    finally:
        await server.stop(None)


async def _call(channel: grpc.aio.Channel, scenario: str) -> bytes:
    response: bytes = await channel.unary_unary(f"/{SERVICE}/Unary", None, None)(scenario.encode())
    return response


async def _failure(channel: grpc.aio.Channel, scenario: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, scenario)
    return caught.value


def _trailers(error: grpc.aio.AioRpcError) -> list[tuple[str, str | bytes]]:
    # grpc.aio's Metadata iterates as (key, value) pairs; the stubs call it a plain Mapping.
    pairs: Any = error.trailing_metadata() or ()
    return list(pairs)


def _status_of(error: grpc.aio.AioRpcError) -> Any:
    status = status_pb2.Status()
    for key, value in _trailers(error):
        if key == STATUS_DETAILS_KEY:
            status.ParseFromString(value)
    return status


# -- on the wire ----------------------------------------------------------------------------------


async def test_success_passes_through(channel: grpc.aio.Channel) -> None:
    assert await _call(channel, "ok") == b"fine"


async def test_invalid_argument_carries_reason_and_field_violation(
    channel: grpc.aio.Channel,
) -> None:
    rpc_error = await _failure(channel, "unknown-dependency")
    error = CpaError.from_rpc_error(rpc_error)
    message = "task 'mail' depends on unknown task 'pdf'"
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "UNKNOWN_DEPENDENCY"
    assert error.message == message
    assert error.metadata == {"field": "spec.todos.todos[1].depends_on[0]"}
    assert error.field_violations == (FieldViolation("spec.todos.todos[1].depends_on[0]", message),)
    assert rpc_error.details() == message
    status = _status_of(rpc_error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == ERROR_DOMAIN


async def test_not_found_has_reason_and_no_field(channel: grpc.aio.Channel) -> None:
    error = CpaError.from_rpc_error(await _failure(channel, "job-not-found"))
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.reason == "JOB_NOT_FOUND"
    assert error.message == "job 'j-1' not found"
    assert error.metadata == {}
    assert error.field_violations == ()


async def test_failed_precondition_names_field_without_bad_request(
    channel: grpc.aio.Channel,
) -> None:
    error = CpaError.from_rpc_error(await _failure(channel, "illegal-transition"))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "ILLEGAL_TRANSITION"
    assert error.metadata == {"field": "job_id"}
    assert error.field_violations == ()


async def test_filter_error_round_trips(channel: grpc.aio.Channel) -> None:
    error = CpaError.from_rpc_error(await _failure(channel, "bad-filter"))
    message = (
        "filter: unknown field 'stat' at position 0 "
        "(fields: state, intent, labels.<key>, create_time, dead_lettered)"
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_FILTER"
    assert error.message == message
    assert error.field_violations == (FieldViolation("filter", message),)


async def test_unexpected_exception_is_internal_without_internals(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cpa_scheduler.api.errors"):
        rpc_error = await _failure(channel, "unexpected")
    error = CpaError.from_rpc_error(rpc_error)
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.reason == "INTERNAL"
    match = re.fullmatch(r"internal error \(ref ([0-9a-f]{8})\)", error.message)
    assert match is not None
    ref = match.group(1)
    assert error.metadata == {"ref": ref}
    assert rpc_error.details() == error.message
    for _key, value in _trailers(rpc_error):
        assert "hunter2" not in (value.decode("latin-1") if isinstance(value, bytes) else value)
    # The log has what the caller does not: the reference, the method and the traceback.
    [record] = [r for r in caplog.records if ref in r.getMessage()]
    assert "_unary" in record.getMessage()
    assert record.exc_info is not None
    assert SECRET in str(record.exc_info[1])


async def test_own_abort_passes_through_untouched(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cpa_scheduler.api.errors"):
        rpc_error = await _failure(channel, "own-abort")
    assert rpc_error.code() is grpc.StatusCode.ABORTED
    assert rpc_error.details() == "busy, try again"
    assert CpaError.from_rpc_error(rpc_error).reason == ""
    assert not caplog.records


async def test_trailers_set_before_the_error_are_kept(channel: grpc.aio.Channel) -> None:
    rpc_error = await _failure(channel, "with-trailers")
    trailers = _trailers(rpc_error)
    keys = [key for key, _ in trailers]
    assert ("x-request-id", "req-42") in trailers
    assert keys.count(STATUS_DETAILS_KEY) == 1
    assert CpaError.from_rpc_error(rpc_error).reason == "JOB_NOT_FOUND"


async def _stream_until_error(
    channel: grpc.aio.Channel, scenario: str
) -> tuple[list[bytes], grpc.aio.AioRpcError | None]:
    received: list[bytes] = []
    call = channel.unary_stream(f"/{SERVICE}/Stream", None, None)(scenario.encode())
    try:
        async for item in call:
            received.append(item)
    except grpc.aio.AioRpcError as error:
        return received, error
    return received, None


async def test_stream_completes(channel: grpc.aio.Channel) -> None:
    assert await _stream_until_error(channel, "ok") == ([b"first", b"second"], None)


async def test_stream_delivers_items_then_the_domain_error(channel: grpc.aio.Channel) -> None:
    received, rpc_error = await _stream_until_error(channel, "job-not-found")
    assert received == [b"first"]
    assert rpc_error is not None
    error = CpaError.from_rpc_error(rpc_error)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")


async def test_stream_unexpected_exception_is_internal(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cpa_scheduler.api.errors"):
        received, rpc_error = await _stream_until_error(channel, "unexpected")
    assert received == [b"first"]
    assert rpc_error is not None
    error = CpaError.from_rpc_error(rpc_error)
    assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "hunter2" not in error.message
    assert any("_stream" in r.getMessage() for r in caplog.records)


# -- the decorator without a server ---------------------------------------------------------------


class _RecordingContext:
    """Stands in for a ServicerContext where the path under test must never abort."""

    def __init__(self) -> None:
        self.aborted = False

    def trailing_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, *args: object, **kwargs: object) -> NoReturn:
        self.aborted = True
        raise AssertionError("abort must not be called")


async def test_cancellation_passes_through_unary() -> None:
    @translate_errors
    async def cancelled(request: bytes, context: _RecordingContext) -> bytes:
        raise asyncio.CancelledError

    context = _RecordingContext()
    with pytest.raises(asyncio.CancelledError):
        await cancelled(b"", context)
    assert not context.aborted


async def test_cancellation_and_grpc_errors_pass_through_streams() -> None:
    @translate_errors
    async def cancelled(request: bytes, context: _RecordingContext) -> AsyncIterator[bytes]:
        yield b"x"
        raise asyncio.CancelledError

    @translate_errors
    async def usage_error(request: bytes, context: _RecordingContext) -> AsyncIterator[bytes]:
        yield b"x"
        raise grpc.aio.UsageError("write after done")

    for method, expected in (
        (cancelled, asyncio.CancelledError),
        (usage_error, grpc.aio.UsageError),
    ):
        context = _RecordingContext()
        with pytest.raises(expected):
            _ = [item async for item in method(b"", context=context)]
        assert not context.aborted


async def test_closing_the_stream_closes_the_method_at_once() -> None:
    closed = asyncio.Event()

    @translate_errors
    async def endless(request: bytes, context: _RecordingContext) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"event"
        finally:
            closed.set()

    stream = endless(b"", _RecordingContext())
    assert await anext(stream) == b"event"
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed.is_set()


def test_decorator_keeps_the_name_and_refuses_sync_functions() -> None:
    assert _unary.__name__ == "_unary"
    assert _stream.__name__ == "_stream"

    def sync(request: bytes, context: object) -> bytes:
        return request

    with pytest.raises(TypeError, match="async def or async generator"):
        translate_errors(sync)  # type: ignore[arg-type]


# -- the code table -------------------------------------------------------------------------------


def test_every_reason_has_exactly_one_table_entry() -> None:
    assert set(REASON_CODE_OVERRIDES).isdisjoint(REASON_CODES)
    assert set(REASON_CODE_OVERRIDES) | set(REASON_CODES) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason))
def test_plain_domain_error_goes_by_reason_and_never_claims_the_call_failed(
    reason: Reason,
) -> None:
    code = status_code_for(DomainError("x", reason=reason))
    assert code == {**REASON_CODES, **REASON_CODE_OVERRIDES}[reason]
    if reason is Reason.UPLOAD_STALLED:  # the server's idle limit on the call itself
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        return
    # These describe the call itself (transport, deadline, client cancel), never a domain outcome.
    assert code not in {
        grpc.StatusCode.OK,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [
        # The class decides...
        (InvalidArgument("x", reason=Reason.NO_CAPABLE_AGENT), grpc.StatusCode.INVALID_ARGUMENT),
        (FailedPrecondition("x", reason=Reason.INVALID_FIELD), grpc.StatusCode.FAILED_PRECONDITION),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (DomainError("x", reason=Reason.GRAPH_CYCLE), grpc.StatusCode.INVALID_ARGUMENT),
        (DomainError("x"), grpc.StatusCode.INTERNAL),
        # ...except where the reason fixes the code.
        (InvalidArgument("x", reason=Reason.JOB_NOT_FOUND), grpc.StatusCode.NOT_FOUND),
        (FailedPrecondition("x", reason=Reason.STALE_ATTEMPT), grpc.StatusCode.FAILED_PRECONDITION),
        (InvalidArgument("x", reason=Reason.REQUEST_ID_REUSED), grpc.StatusCode.ALREADY_EXISTS),
        (DomainError("x", reason=Reason.UNAUTHENTICATED), grpc.StatusCode.UNAUTHENTICATED),
        (DomainError("x", reason=Reason.PERMISSION_DENIED), grpc.StatusCode.PERMISSION_DENIED),
        (InvalidArgument("x", reason=Reason.POLICY_VIOLATION), grpc.StatusCode.PERMISSION_DENIED),
        (FailedPrecondition("x", reason=Reason.RATE_LIMITED), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DomainError("x", reason=Reason.SERVER_SHUTTING_DOWN), grpc.StatusCode.UNAVAILABLE),
        (InvalidArgument("x", reason=Reason.INTERNAL), grpc.StatusCode.INTERNAL),
        (
            FailedPrecondition("x", reason=Reason.JOB_DEADLINE_EXCEEDED),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ],
)
def test_code_of_error(error: DomainError, code: grpc.StatusCode) -> None:
    assert status_code_for(error) is code


def test_subclasses_inherit_their_parents_code() -> None:
    class CatalogError(InvalidArgument):
        pass

    assert status_code_for(CatalogError("x", reason=Reason.TEMPLATE_ERROR)) is (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def _detail_types(status: Any) -> list[str]:
    return [detail.TypeName() for detail in status.details]


def test_bad_request_only_for_bad_input_with_a_field() -> None:
    _, with_field = status_for(InvalidArgument("bad", field="page_size"))
    _, without_field = status_for(InvalidArgument("bad"))
    _, precondition = status_for(FailedPrecondition("no", field="job_id"))
    assert _detail_types(with_field) == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]
    assert _detail_types(without_field) == ["google.rpc.ErrorInfo"]
    assert _detail_types(precondition) == ["google.rpc.ErrorInfo"]


def _documented_tables() -> Iterator[tuple[int, Reason, grpc.StatusCode]]:
    """(column count, reason, code) of every row of the "Status codes" section's tables."""
    section = API_STYLE.read_text().split("\n## Status codes\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        code = grpc.StatusCode[cells[1].strip("`")]
        for name in cells[0].split(","):
            yield len(cells), Reason(name.strip().strip("`")), code


def test_docs_table_matches_the_code() -> None:
    rows = list(_documented_tables())
    overrides = {reason: code for columns, reason, code in rows if columns == 3}
    by_reason = {reason: code for columns, reason, code in rows if columns == 2}
    assert overrides == dict(REASON_CODE_OVERRIDES)
    assert by_reason == dict(REASON_CODES)
    assert len(rows) == len(Reason)


def test_a_limit_carries_its_metadata_a_retry_info_and_a_retry_after() -> None:
    error = LimitExceeded(
        "slow down",
        reason=Reason.RATE_LIMITED,
        metadata={"scope": "ip", "limit": "100"},
        retry_delay_s=1.2345,
    )
    code, status = status_for(error)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _detail_types(status) == ["google.rpc.ErrorInfo", "google.rpc.RetryInfo"]
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    status.details[0].Unpack(info)
    status.details[1].Unpack(retry)
    assert dict(info.metadata) == {"scope": "ip", "limit": "100"}
    assert retry.retry_delay.ToMilliseconds() == 1235
    assert retry_after_header(error) == "2"  # whole seconds, rounded up
    # A quota has no delay to tell: no RetryInfo, no header.
    quota = LimitExceeded("full", reason=Reason.QUOTA_EXCEEDED, metadata={"quota": "x"})
    assert _detail_types(status_for(quota)[1]) == ["google.rpc.ErrorInfo"]
    assert retry_after_header(quota) is None
    assert (
        retry_after_header(
            LimitExceeded("now", reason=Reason.RATE_LIMITED, metadata={}, retry_delay_s=0.001)
        )
        == "1"
    )
