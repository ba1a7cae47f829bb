"""Making hostile calls and judging their outcome.

A call is made through a generic method handle on the default channel (no options), with a
deadline; a request is a message (serialized as usual) or raw bytes (for invalid UTF-8 and
undecodable bodies). Replies are decoded with the generated types, so a reply the default client
cannot decode shows as it would for any client.

Each kind of failure raises its own exception class (`finding(rpc, what)`): hypothesis tells
them apart and reports each, shrunk to its smallest request, instead of only the first.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor as d
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from cpa.executor.v1 import executor_service_pb2
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2

from .arena import CALL_TIMEOUT_S, DEFAULT_TENANT, Metadata, tenant_metadata
from .strategies import Desc, FieldDesc, message_class

SCHEDULER = scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"]
EXECUTOR = executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"]
SCHEDULER_RPCS = tuple(method.name for method in SCHEDULER.methods)

# The default client's receive limit: a reply past it fails on the client alone.
DEFAULT_CLIENT_MAX_RECEIVE = 4 * 1024 * 1024
ERROR_DOMAIN = "cpa.scheduler"
SUMMARY_CHARS = 1_500
# Nesting past which a failure is told apart as one of depth (a Struct level costs two).
DEEP_MESSAGES = 40
# Reasons about the request as a whole: no one field to name (a body that does not decode may
# be answered MALFORMED_MESSAGE).
WHOLE_REQUEST_REASONS = frozenset({"PAYLOAD_TOO_LARGE", "MALFORMED_MESSAGE"})


class Finding(AssertionError):  # noqa: N818 - a finding, not an error of the suite
    """A hostile request got an answer it must not get."""


@functools.cache
def finding(rpc: str, what: str) -> type[Finding]:
    """The exception class of one kind of finding (hypothesis reports each class separately)."""
    words = "".join(c if c.isalnum() else " " for c in f"{rpc} {what}").split()
    name = "".join(word[:1].upper() + word[1:] for word in words)
    return type(name[:80] or "Finding", (Finding,), {})


def summarize(request: Message | bytes, *, limit: int = SUMMARY_CHARS) -> str:
    """A short, readable form of a request: long strings and bytes shortened, deep values cut."""
    if isinstance(request, bytes):
        return f"<{len(request)} raw bytes: {request[:80]!r}>"
    size = f"{request.ByteSize()} bytes, {nesting(request)} messages deep"
    try:
        copy = type(request)()
        copy.CopyFrom(request)
        _shorten(copy)
        text = text_format.MessageToString(copy, as_one_line=True, as_utf8=True)
    except (DecodeError, RecursionError):  # nested past what protobuf reads back
        raw = request.SerializeToString()
        return f"{type(request).__name__}({size}, too deep to print) {raw[:120]!r}..."
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} chars)"
    return f"{type(request).__name__}({size}) {{{text}}}"


def nesting(message: Message) -> int:
    """How many messages deep the message goes (itself: 1)."""
    deepest = 0
    fd: FieldDesc
    for fd, value in message.ListFields():
        if fd.type != d.FieldDescriptor.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            items = (
                value.values()
                if fd.message_type.fields_by_name["value"].type == d.FieldDescriptor.TYPE_MESSAGE
                else []
            )
        else:
            items = value if fd.is_repeated else [value]
        for item in items:
            deepest = max(
                deepest, nesting(item) + (1 if fd.message_type.GetOptions().map_entry else 0)
            )
    return deepest + 1


def _shorten(message: Any, level: int = 0) -> None:
    fd: FieldDesc
    if level > 12 and message.DESCRIPTOR.full_name == "google.protobuf.Struct":
        more = nesting(message)
        message.Clear()
        message.fields["..."].string_value = f"{more} more levels"
        return
    for fd, value in message.ListFields():
        if fd.type == d.FieldDescriptor.TYPE_STRING:
            if fd.is_repeated:
                if len(value) > 20:
                    kept = [*value[:3], f"... {len(value)} items"]
                    del value[:]
                    value.extend(kept)
                for index, item in enumerate(value):
                    if len(item) > 60:
                        value[index] = _short(item)
            elif len(value) > 60:
                setattr(message, fd.name, _short(value))
        elif fd.type == d.FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                if fd.message_type.fields_by_name["value"].type == d.FieldDescriptor.TYPE_MESSAGE:
                    for item in value.values():
                        _shorten(item, level + 1)
                elif any(len(str(v)) > 60 for v in value.values()):
                    for key in list(value):
                        if isinstance(value[key], str) and len(value[key]) > 60:
                            value[key] = _short(value[key])
            elif fd.is_repeated:
                if len(value) > 20:
                    extra = len(value) - 3
                    del value[3:]
                    if fd.message_type.full_name == "google.protobuf.Value":
                        value.add().string_value = f"... {extra} more items"
                for item in value:
                    _shorten(item, level + 1)
            else:
                _shorten(value, level + 1)


def _short(text: str) -> str:
    return f"<{len(text)} chars: {text[:24]!r}...>"


@dataclass(frozen=True)
class HostileCall:
    """One call: the RPC, the tenant it names, the request and how it was made."""

    rpc: str
    request: Message | bytes
    tenant: str | None = None
    how: str = "random"
    kind: str = ""
    """For raw bodies, what is wrong with them (findings are told apart by it)."""

    @property
    def metadata(self) -> Metadata:
        return tenant_metadata(self.tenant)

    def __repr__(self) -> str:
        tenant = "(default tenant)" if self.tenant is None else repr(self.tenant)
        return f"<{self.rpc} [{self.how}] tenant={tenant} {summarize(self.request)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How hypothesis prints a drawn call (it would list every field in full otherwise)."""
        printer.text(repr(self))


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    trailers: Sequence[tuple[str, str | bytes]] = ()
    responses: list[Any] = field(default_factory=list)

    def describe(self) -> str:
        details = self.details if len(self.details) < 400 else self.details[:400] + "..."
        return f"{self.code.name}: {details!r}"


def _serialize(request: Message | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def _method(service: Desc, rpc: str) -> Desc:
    return service.methods_by_name[rpc]


def call_scheduler(
    channel: grpc.Channel,
    call: HostileCall,
    *,
    timeout_s: float = CALL_TIMEOUT_S,
    service: Desc = SCHEDULER,
    metadata: Metadata | None = None,
) -> Outcome:
    """Makes the call (of `service`, SchedulerService by default; with `metadata` instead of
    the call's own: a credential, say); a server stream (WatchJob) is read to its end."""
    method = _method(service, call.rpc)
    path = f"/{service.full_name}/{method.name}"
    decode = message_class(method.output_type).FromString
    sent = call.metadata if metadata is None else metadata
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, _serialize, decode)
            responses = list(stream(call.request, metadata=sent, timeout=timeout_s))
            return Outcome(grpc.StatusCode.OK, "", responses=responses)
        unary = channel.unary_unary(path, _serialize, decode)
        response = unary(call.request, metadata=sent, timeout=timeout_s)
        return Outcome(grpc.StatusCode.OK, "", responses=[response])
    except grpc.RpcError as error:
        return failed_outcome(error)


def open_connect(
    channel: grpc.Channel,
    frames: Sequence[bytes],
    *,
    timeout_s: float = CALL_TIMEOUT_S,
    metadata: Metadata = (),
) -> Outcome:
    """An agent stream that sends `frames` (serialized ConnectRequests or garbage), half-closes
    and reads every response until the server ends the stream; `metadata`: a credential."""
    path = f"/{EXECUTOR.full_name}/Connect"
    connect = channel.stream_stream(path, None, executor_service_pb2.ConnectResponse.FromString)
    responses: list[executor_service_pb2.ConnectResponse] = []

    def requests() -> Iterator[bytes]:
        yield from frames

    try:
        for response in connect(requests(), metadata=metadata, timeout=timeout_s):
            responses.append(response)
        return Outcome(grpc.StatusCode.OK, "", responses=responses)
    except grpc.RpcError as error:
        outcome = failed_outcome(error)
        outcome.responses = responses
        return outcome


def failed_outcome(error: grpc.RpcError) -> Outcome:
    assert isinstance(error, grpc.Call)
    return Outcome(error.code(), error.details() or "", tuple(error.trailing_metadata() or ()))


def _jobs_in(response: Any) -> list[job_pb2.Job]:
    """The jobs a reply carries (job, jobs, responses[].job)."""
    jobs: list[job_pb2.Job] = []
    for name in ("job", "jobs", "responses"):
        if name not in response.DESCRIPTOR.fields_by_name:
            continue
        value = getattr(response, name)
        if isinstance(value, job_pb2.Job):
            jobs += [value] if response.HasField(name) else []
        else:
            for item in value:
                jobs += [item] if isinstance(item, job_pb2.Job) else _jobs_in(item)
    return jobs


def _check_tenant(call: Any, outcome: Outcome) -> None:
    """A reply shows only jobs of the caller's tenant (the default one when it names none)."""
    tenant = getattr(call, "tenant", None) or DEFAULT_TENANT
    for response in outcome.responses:
        if not isinstance(response, Message):
            continue
        foreign = [job.job_id for job in _jobs_in(response) if job.tenant != tenant]
        if foreign:
            raise finding(call.rpc, "shows another tenant's job")(
                f"{call.rpc}: answered tenant {tenant[:40]!r} with jobs of another tenant "
                f"{foreign[:3]}\n  request: {call!r}"
            )


def _nonfinite(message: Message) -> bool:
    """Whether a float field anywhere in the message holds NaN or an infinity."""
    fd: FieldDesc
    for fd, value in message.ListFields():
        values = (
            list(value.values())
            if fd.message_type and fd.message_type.GetOptions().map_entry
            else (list(value) if fd.is_repeated else [value])
        )
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                return True
            if isinstance(item, Message) and _nonfinite(item):
                return True
    return False


def _where(call: object) -> str:
    """Where a failure came from, so that different causes are reported separately: the field
    a mutation hit ("at spec.deadline"), and whether the request held NaN/infinities or nested
    deep."""
    how = getattr(call, "how", "")
    request = getattr(call, "request", None)
    where = ""
    if how.startswith("mutated "):
        where = " at " + re.sub(r"\[[^]]*\]", "", how.removeprefix("mutated "))
    if isinstance(request, Message):
        if _nonfinite(request):
            where += " (NaN or infinity in the request)"
        elif nesting(request) > DEEP_MESSAGES:
            where += f" (request over {DEEP_MESSAGES} messages deep)"
    return where


def describe_error(error: grpc.RpcError) -> str:
    """The code and (shortened) details of a failed call."""
    assert isinstance(error, grpc.Call)
    return f"{error.code().name} {(error.details() or '')[:200]!r}"


def rich_status(outcome: Outcome) -> status_pb2.Status | None:
    for key, value in outcome.trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def error_details(
    outcome: Outcome,
) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest]:
    """The answer's ErrorInfo and BadRequest (empty ones when it carries none)."""
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    status = rich_status(outcome)
    for detail in status.details if status is not None else ():
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
    return info, bad


def _bad_request_problem(outcome: Outcome, *, whole: bool) -> str | None:
    """Why an INVALID_ARGUMENT answer is not one of ours (ErrorInfo + BadRequest naming the
    field), or None. A `whole` request that does not decode has no field to name."""
    status = rich_status(outcome)
    if status is None:
        return "no google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    has_info = any(a.Unpack(info) for a in status.details if a.Is(info.DESCRIPTOR))
    has_bad = any(a.Unpack(bad) for a in status.details if a.Is(bad.DESCRIPTOR))
    if not has_info or info.domain != ERROR_DOMAIN or not info.reason:
        return "no ErrorInfo of domain cpa.scheduler"
    if whole or info.reason in WHOLE_REQUEST_REASONS:
        return None
    if not has_bad or not any(v.field for v in bad.field_violations):
        return f"no BadRequest naming a field (reason {info.reason})"
    return None


class Judged(Protocol):
    """What a judgement needs of a call: its RPC (and a repr that shows the request)."""

    @property
    def rpc(self) -> str: ...


def judge(
    call: Judged, outcome: Outcome, *, still_live: Callable[[], bool] = lambda: False
) -> None:
    """Raises a Finding when the answer is one bad input must never get. `still_live` says
    whether a stream that ran into its deadline was following a job that has not ended (the
    only case where a deadline is no hang)."""
    code = outcome.code
    if code == grpc.StatusCode.OK:
        _check_tenant(call, outcome)
        return
    what: str | None = None
    details = outcome.details
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if not still_live():
            what = "hangs past its deadline"
    elif code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        if "deserializing response" in details or "parse response" in details.lower():
            what = "reply does not decode with the default client"
        elif "Error parsing message" in details or "deserializing request" in details:
            why = getattr(call, "kind", "") or details.rsplit(": ", 1)[-1][:40]
            what = f"undecodable request ({why}) answers {code.name}"
        else:
            what = f"answers {code.name}{_where(call)}"
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        lowered = details.lower()
        if "metadata" in lowered:
            what = "error trailer too large for the client (echoed input)"
        elif f"vs. {DEFAULT_CLIENT_MAX_RECEIVE})" in details:
            what = "reply larger than the default client accepts"
    elif code == grpc.StatusCode.INVALID_ARGUMENT:
        undecodable = bool(getattr(call, "kind", "")) or getattr(call, "how", "") == "garbage"
        problem = _bad_request_problem(outcome, whole=undecodable)
        if problem is not None:
            what = f"INVALID_ARGUMENT with {problem}"
    if what is not None:
        raise finding(call.rpc, what)(
            f"{call.rpc}: {what}\n  answer: {outcome.describe()}\n  request: {call!r}"
        )
