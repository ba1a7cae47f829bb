"""Rate limits on calls: a token bucket per credential and one per client address, both taken
from (or neither) before the call runs; beyond either, RESOURCE_EXHAUSTED (RATE_LIMITED) with
ErrorInfo.metadata scope/limit and a RetryInfo delay (and `retry-after` for HTTP callers).

What counts: every call of every service but ExecutorService (an agent's Connect stream is one
long call whose messages must flow; reconnect storms after a failover must not be refused, and
agents are bounded by their tokens and slots), health and reflection. A call costs 1; a
server stream (WatchJob, DownloadArtifact) costs 1 however long it lasts; BatchScheduleJobs
costs one per request (`charge_more` takes the rest once the batch is decoded).

The credential is `current_principal().credential_id` (set by the auth interceptor, which must
run before this one), limited at its own tenant's rate; with authentication off (the principal
is CredentialKind.INSECURE_LOCAL, one for every caller) the tenant the call names is the key
(scope `tenant`). The address is the peer's, or what a trusted proxy says it is
(security/client_address.py).

A refusal is audited (docs/AUDIT.md) as the auth layer's are: before the caller gets it, bounded
per principal, so a client hammering past its limit costs a write each only up to the bound.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from cpa.executor.v1 import executor_service_pb2
from cpa_scheduler.audit import AuditLog
from cpa_scheduler.domain import LimitExceeded, Reason
from cpa_scheduler.redis_keys import RedisKeys
from cpa_scheduler.security.buckets import Ask, Buckets, Decision, Rate
from cpa_scheduler.security.client_address import FORWARDED_FOR_KEY, Network, client_key
from cpa_scheduler.security.principal import CredentialKind, current_principal
from cpa_scheduler.security.tenant_limits import LimitsTable

from .audit_calls import audit_denied
from .call_context import tenant_of
from .errors import abort
from .interceptors import Context, Handler, around, rewrap

if TYPE_CHECKING:  # generic in the stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

UNLIMITED_SERVICES = frozenset(
    {
        executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# Callers whose bucket keys are kept made.
_KEY_CACHE = 4096

_SCOPE_WORDS = {
    "key": "for this credential",
    "tenant": "for this tenant",
    "ip": "from this address",
}


@dataclass(frozen=True, slots=True)
class _Admitted:
    """The buckets a call was admitted by, for `charge_more`."""

    limiter: RateLimiter
    asks: tuple[Ask, ...]
    scopes: tuple[str, ...]


_admitted: ContextVar[_Admitted | None] = ContextVar("cpa_rate_admitted", default=None)


async def charge_more(cost: int) -> None:
    """Take `cost` more tokens from the buckets that admitted the call being served (a batch's
    requests beyond its first); LimitExceeded (RATE_LIMITED) when they hold too few, and then
    nothing is taken. Nothing happens when the call was not limited."""
    admitted = _admitted.get()
    if admitted is None or cost <= 0:
        return
    decision = await admitted.limiter.buckets.take(admitted.asks, cost)
    if not decision.allowed:
        raise admitted.limiter.refusal(decision, admitted.asks, admitted.scopes)


class RateLimiter(_Interceptor):
    def __init__(
        self,
        buckets: Buckets,
        table: LimitsTable,
        *,
        per_ip: int,
        trusted_proxies: Sequence[Network],
        default_tenant: str,
        keys: RedisKeys,
        audit_log: AuditLog | None = None,
    ) -> None:
        self.buckets = buckets
        self._audit_log = audit_log
        self._table = table
        self._ip_rate = Rate(per_ip) if per_ip else None
        self._proxies = tuple(trusted_proxies)
        self._default_tenant = default_tenant
        # Callers repeat (a connection's peer, a credential): their keys are made once.
        self._bucket_key = functools.lru_cache(maxsize=_KEY_CACHE)(keys.rate_bucket)
        self._client_key = functools.lru_cache(maxsize=_KEY_CACHE)(self._address_of)
        # method -> (the handler gRPC gave, ours): registered handlers are the same object on
        # every call, so each method is wrapped once.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[return-value]  # UNIMPLEMENTED, answered by gRPC
        method = str(handler_call_details.method)
        if method.split("/", 2)[1] in UNLIMITED_SERVICES:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        admit = functools.partial(self._admit, method=method)
        wrapped = rewrap(handler, lambda behavior: around(behavior, admit))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def asks(self, context: Context) -> tuple[tuple[Ask, ...], tuple[str, ...]]:
        """The buckets a call takes from, and their scopes."""
        asks: list[Ask] = []
        scopes: list[str] = []
        if self._ip_rate is not None:
            forwarded = (
                [
                    str(value)
                    for key, value in context.invocation_metadata() or ()
                    if key == FORWARDED_FOR_KEY
                ]
                if self._proxies
                else []
            )
            asks.append((self._client_key(context.peer(), tuple(forwarded)), self._ip_rate))
            scopes.append("ip")
        principal = current_principal()
        if principal is not None and principal.kind is not CredentialKind.INSECURE_LOCAL:
            # The credential's own tenant sets its limit, also while it acts for another.
            tenant = principal.home_tenant or principal.tenant
            scope, subject = "key", principal.credential_id
        else:
            # Authentication off: every caller is "local"; the tenant it names tells them apart.
            tenant = tenant_of(context, default=self._default_tenant)
            scope, subject = "tenant", tenant
        per_minute = self._table.of(tenant).calls_per_minute
        if per_minute:
            asks.append((self._bucket_key(scope, subject), Rate(per_minute)))
            scopes.append(scope)
        return tuple(asks), tuple(scopes)

    def _address_of(self, peer: str, forwarded: tuple[str, ...]) -> str:
        return self._bucket_key("ip", client_key(peer, forwarded, self._proxies))

    async def _admit(self, context: Context, *, method: str) -> None:
        asks, scopes = self.asks(context)
        if not asks:
            return
        decision = await self.buckets.take(asks, 1)
        if not decision.allowed:
            refusal = self.refusal(decision, asks, scopes)
            if self._audit_log is not None:
                principal = current_principal()
                await audit_denied(
                    self._audit_log,
                    method=method,
                    metadata=context.invocation_metadata(),
                    code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                    reason=refusal.reason,
                    message=refusal.message,
                    principal=principal,
                    tenant=principal.tenant if principal else self._default_tenant,
                    peer=context.peer() or "",
                )
            await abort(context, refusal)
        _admitted.set(_Admitted(self, asks, scopes))

    @staticmethod
    def refusal(decision: Decision, asks: Sequence[Ask], scopes: Sequence[str]) -> LimitExceeded:
        scope = scopes[decision.refused]
        limit = asks[decision.refused][1].per_minute
        return LimitExceeded(
            f"rate limit: more than {limit} calls a minute {_SCOPE_WORDS[scope]}; retry in "
            f"{decision.retry_after_s:.3g} s",
            reason=Reason.RATE_LIMITED,
            metadata={
                "scope": scope,
                "limit": str(limit),
                "window": "60s",
                "retry_after_s": f"{decision.retry_after_s:.3f}",
            },
            retry_delay_s=decision.retry_after_s,
        )
