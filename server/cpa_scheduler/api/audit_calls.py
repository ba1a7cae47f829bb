"""The audit trail at the API: `audited` marks the state-changing RPCs (their refusals are
audited, within bounds; their changes come with an entry written in the change's transaction),
and ListAuditEntries (request checked, the log asked, entries converted: this component's
conversion between domain and protobuf)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, Final, Protocol, TypeVar

import grpc.aio
from google.protobuf import timestamp_pb2

from cpa.scheduler.v1 import audit_pb2
from cpa_scheduler.audit import AuditLog
from cpa_scheduler.domain import (
    AuditCall,
    AuditEntry,
    AuditPosition,
    AuditQuery,
    DomainError,
    InvalidArgument,
    PagePosition,
    Reason,
)
from cpa_scheduler.domain.errors import clip
from cpa_scheduler.security.principal import Principal

from . import proto_values
from .audit_context import Metadata, audit_call, denied_call
from .errors import status_code_for
from .page_token import PageTokens, TokenKind, fingerprint_query, page_size

Context = grpc.aio.ServicerContext[Any, Any]

_PAGE_DEFAULT: Final = 100
_PAGE_MAX: Final = 1000
# Filter bounds (characters): beyond any value the server writes, refused before the query.
_LIMITS: Final = {"job_id": 128, "principal": 256, "action": 64, "result": 128}
# What a refused call's entry keeps of the job id it named (it may be anything the caller sent).
_REFUSED_JOB_ID_BYTES: Final = 128

_CALL: ContextVar[AuditCall | None] = ContextVar("cpa_audit_call", default=None)


class AuditedServicer(Protocol):
    """What `audited` needs of a servicer."""

    @property
    def audit_log(self) -> AuditLog: ...

    @property
    def default_tenant(self) -> str: ...


S = TypeVar("S", bound=AuditedServicer)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def current_call() -> AuditCall:
    """The audited call being served (inside a method marked `audited`)."""
    call = _CALL.get()
    if call is None:
        raise RuntimeError("current_call() outside an @audited method")
    return call


def audited(
    action: str,
) -> Callable[
    [Callable[[S, Req, Context], Coroutine[Any, Any, Resp]]],
    Callable[[S, Req, Context], Coroutine[Any, Any, Resp]],
]:
    """Mark a state-changing RPC: its AuditCall is `current_call()` while it runs (the method
    hands it to the orchestrator, whose change writes the entry), and a DomainError it raises
    is audited as a refusal (AuditLog.refused, bounded) before it reaches the caller."""

    def wrap(
        method: Callable[[S, Req, Context], Coroutine[Any, Any, Resp]],
    ) -> Callable[[S, Req, Context], Coroutine[Any, Any, Resp]]:
        @functools.wraps(method)
        async def handler(self: S, request: Req, context: Context) -> Resp:
            call = audit_call(
                context,
                action,
                default_tenant=self.default_tenant,
                request_id=str(getattr(request, "request_id", "")),
            )
            token = _CALL.set(call)
            try:
                return await method(self, request, context)
            except DomainError as error:
                job_id = str(getattr(request, "job_id", ""))
                await refused(self.audit_log, call, error, job_id=job_id)
                raise
            finally:
                _CALL.reset(token)

        return handler

    return wrap


async def refused(
    log: AuditLog, call: AuditCall, error: DomainError, *, job_id: str = "", why: str = ""
) -> None:
    """Audit `error` refusing `call` (bounded per principal)."""
    await log.refused(
        call,
        code=status_code_for(error).name,
        reason=error.reason.value,
        message=error.message,
        field=error.field,
        job_id=clip(job_id, _REFUSED_JOB_ID_BYTES),
        why=why,
    )


async def audit_denied(
    log: AuditLog,
    *,
    method: str,
    metadata: Metadata | None,
    code: grpc.StatusCode,
    reason: Reason,
    message: str,
    principal: Principal | None = None,
    tenant: str,
    peer: str = "",
) -> bool:
    """For the auth layer: audit a call it refused (UNAUTHENTICATED, PERMISSION_DENIED,
    RATE_LIMITED) before any servicer ran, outside any job transaction and bounded per
    principal. Without one, per peer host, whatever tenant the call names: a caller cannot
    multiply its writes by naming tenants or opening connections (new ports). Returns whether an
    entry was written."""
    call = denied_call(
        method=method, metadata=metadata, principal=principal, tenant=tenant, peer=peer
    )
    bound_key = None if principal is not None else ("", _peer_host(peer))
    return await log.refused(
        call, code=code.name, reason=reason.value, message=message, bound_key=bound_key
    )


def _peer_host(peer: str) -> str:
    """`ipv4:10.0.0.1:5000` -> `ipv4:10.0.0.1` (`ipv6:[::1]:5000` -> `ipv6:[::1]`)."""
    host, colon, port = peer.rpartition(":")
    return host if colon and port.isdigit() and host not in ("ipv4", "ipv6") else peer


def entry_to_proto(entry: AuditEntry) -> audit_pb2.AuditEntry:
    message = audit_pb2.AuditEntry(
        entry_id=entry.entry_id,
        tenant=entry.tenant,
        principal=entry.subject,
        roles=list(entry.roles),
        credential_kind=entry.credential_kind,
        credential_id=entry.credential_id,
        home_tenant=entry.home_tenant,
        peer=entry.peer,
        action=entry.action,
        job_id=entry.job_id,
        task_id=entry.task_id,
        attempt=entry.attempt,
        task_action=entry.task_action,
        agent_id=entry.agent_id,
        reason=entry.reason,
        policy_decision=entry.policy_decision,
        result_code=entry.result_code,
        result_reason=entry.result_reason,
        result_message=entry.result_message,
        result_field=entry.result_field,
        artifact_ids=list(entry.artifact_ids),
        request_id=entry.request_id,
        trace_id=entry.trace_id,
        suppressed=entry.suppressed,
    )
    message.create_time.FromDatetime(entry.create_time)
    return message


def _time(request: audit_pb2.ListAuditEntriesRequest, field: str) -> Any:
    if not request.HasField(field):  # type: ignore[arg-type]
        return None
    value: timestamp_pb2.Timestamp = getattr(request, field)
    return proto_values.time_from_proto(value, field)


def query_of(request: audit_pb2.ListAuditEntriesRequest) -> AuditQuery:
    """The request's filters, checked (INVALID_FIELD naming the field, INVALID_TIME_RANGE)."""
    for field, limit in _LIMITS.items():
        value = getattr(request, field)
        if len(value) > limit:
            raise InvalidArgument(
                f"{field} is {len(value)} characters; at most {limit}", field=field
            )
    start, end = _time(request, "start_time"), _time(request, "end_time")
    if start is not None and end is not None and end <= start:
        raise InvalidArgument(
            f"end_time {end.isoformat()} is not after start_time {start.isoformat()}",
            reason=Reason.INVALID_TIME_RANGE,
            field="end_time",
        )
    return AuditQuery(
        job_id=request.job_id,
        subject=request.principal,
        action=request.action,
        result_code=request.result,
        start_time=start,
        end_time=end,
    )


def _fingerprint(query: AuditQuery) -> str:
    times = [t.isoformat() if t is not None else "" for t in (query.start_time, query.end_time)]
    return fingerprint_query(
        "audit", query.job_id, query.subject, query.action, query.result_code, *times
    )


async def list_audit_entries(
    request: audit_pb2.ListAuditEntriesRequest,
    *,
    tenant: str,
    log: AuditLog,
    page_tokens: PageTokens,
) -> audit_pb2.ListAuditEntriesResponse:
    query = query_of(request)
    limit = page_size(request.page_size, default=_PAGE_DEFAULT, maximum=_PAGE_MAX)
    fingerprint = _fingerprint(query)
    after = None
    if request.page_token:
        position = page_tokens.time_id_position(
            request.page_token, tenant=tenant, query_fingerprint=fingerprint, kind=TokenKind.AUDIT
        )
        after = AuditPosition(position.create_time, position.job_id)
    # One more than the page: whether a next page exists without an empty last page.
    found = await log.entries(tenant, query, after=after, limit=limit + 1)
    page = found[:limit]
    response = audit_pb2.ListAuditEntriesResponse(entries=[entry_to_proto(e) for e in page])
    if len(found) > limit:
        last = page[-1]
        response.next_page_token = page_tokens.time_id_token(
            PagePosition(create_time=last.create_time, job_id=last.entry_id),
            tenant=tenant,
            query_fingerprint=fingerprint,
            kind=TokenKind.AUDIT,
        )
    return response
