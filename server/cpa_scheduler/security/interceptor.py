"""The gRPC interceptor that authenticates and authorizes every call once, before its handler.

It resolves the caller's Principal from the metadata, checks the method's permission
(security/permissions.py), applies `x-cpa-act-as-tenant`, and sets the principal for the
handler's whole run, streams included (the handler is wrapped, as api/call_limit.py does). A
refused call ends with UNAUTHENTICATED or PERMISSION_DENIED before any handler code runs.

With settings.insecure_local the principal is an admin of the tenant named in `x-cpa-tenant`
(or the default tenant): the behaviour from before authentication, for loopback only.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from cpa_scheduler.api.audit_calls import audit_denied
from cpa_scheduler.api.call_context import TENANT_METADATA_KEY
from cpa_scheduler.api.errors import abort, status_code_for
from cpa_scheduler.audit import AuditLog
from cpa_scheduler.domain import DomainError, Reason

from . import events
from .authenticator import Authenticator, acting_for, insecure_local_principal
from .errors import permission_denied
from .permissions import Permission, allows, required_permission
from .principal import Principal, reset_principal, set_current_principal

ACT_AS_TENANT_METADATA_KEY = "x-cpa-act-as-tenant"
_MAX_TENANT_CHARS = 128
# The refusals that are audited: a bad tenant header (INVALID_ARGUMENT) is bad input, not a
# denial, and names no tenant its entry could belong to.
_AUDITED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})

if TYPE_CHECKING:  # generic in the stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    Context = grpc.aio.ServicerContext
    _Interceptor = grpc.aio.ServerInterceptor


def _metadata_value(context: Context, name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return ""


def _is_tenant_name(value: str) -> bool:
    return len(value) <= _MAX_TENANT_CHARS and value.isprintable()


def _tenant_name(value: str, header: str) -> str:
    if not _is_tenant_name(value):
        raise DomainError(
            f"metadata {header} must be a printable tenant name of at most "
            f"{_MAX_TENANT_CHARS} characters",
            reason=Reason.INVALID_FIELD,
            field=header,
        )
    return value


class AuthInterceptor(_Interceptor):
    """One per server; `authenticator` is None with settings.insecure_local. `audit_log`
    records the refusals (None: logged only)."""

    def __init__(
        self,
        authenticator: Authenticator | None,
        *,
        default_tenant: str,
        audit_log: AuditLog | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._default_tenant = default_tenant
        self._audit_log = audit_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[return-value]  # gRPC answers UNIMPLEMENTED
        method = str(handler_call_details.method)
        permission = required_permission(method)
        if permission is Permission.PUBLIC:
            return handler
        wrap: Callable[[Any], Any] = lambda behavior: self._guarded(behavior, method, permission)  # noqa: E731
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guarded(self, behavior: Any, method: str, permission: Permission | None) -> Any:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                token = set_current_principal(await self._admit(context, method, permission))
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    _reset(token)

            return stream

        async def call(request: Any, context: Context) -> Any:
            token = set_current_principal(await self._admit(context, method, permission))
            try:
                return await behavior(request, context)
            finally:
                _reset(token)

        return call

    async def _admit(
        self, context: Context, method: str, permission: Permission | None
    ) -> Principal:
        principal: Principal | None = None
        try:
            principal = await self._principal(context)
            self._check_tenant_header(context, principal)
            if permission is None:
                raise permission_denied(f"{method} has no permission rule; refused")
            if not allows(principal.roles, permission):
                raise permission_denied(
                    f"{principal.subject} may not call {method.rsplit('/', 1)[-1]}: it needs "
                    f"the permission {permission.value}, which its roles "
                    f"({', '.join(sorted(principal.roles)) or 'none'}) do not grant"
                )
            act_as = _metadata_value(context, ACT_AS_TENANT_METADATA_KEY)
            if act_as and act_as != principal.tenant:
                principal = self._act_as(principal, act_as, method, context)
        except DomainError as error:
            events.denied(method, error, principal=principal, peer=context.peer())
            await self._audit(context, method, error, principal)
            await abort(context, error)
        return principal

    async def _audit(
        self, context: Context, method: str, error: DomainError, principal: Principal | None
    ) -> None:
        code = status_code_for(error)
        if self._audit_log is None or code not in _AUDITED_CODES:
            return
        metadata = context.invocation_metadata()
        if principal is not None:
            tenant = principal.tenant
        else:
            # The tenant the caller named, so that its admins see the attempts; a name that
            # could not be a tenant's goes to the default tenant.
            named = _metadata_value(context, TENANT_METADATA_KEY)
            tenant = named if named and _is_tenant_name(named) else self._default_tenant
        # Awaited, so an entry exists once the caller has its refusal; bounded, so a flood
        # of refusals costs a write each only up to the bound (audit/log.py).
        await audit_denied(
            self._audit_log,
            method=method,
            metadata=metadata,
            code=code,
            reason=error.reason,
            message=error.message,
            principal=principal,
            tenant=tenant,
            peer=context.peer() or "",
        )

    async def _principal(self, context: Context) -> Principal:
        named = _metadata_value(context, TENANT_METADATA_KEY)
        if self._authenticator is None:
            tenant = _tenant_name(named, TENANT_METADATA_KEY) if named else ""
            return insecure_local_principal(tenant or self._default_tenant)
        return await self._authenticator.authenticate(context.invocation_metadata() or ())

    def _check_tenant_header(self, context: Context, principal: Principal) -> None:
        if self._authenticator is None:
            return  # the header is what picked the tenant
        named = _metadata_value(context, TENANT_METADATA_KEY)
        if named and named != principal.tenant:
            # The tenant comes from the credential; a header naming another is a mistake (or an
            # attempt) worth a clear answer rather than silence (and an audited refusal of
            # the principal).
            raise permission_denied(
                f"metadata {TENANT_METADATA_KEY} names another tenant than the credential's; "
                f"drop it, or act for that tenant with {ACT_AS_TENANT_METADATA_KEY} (operator)",
                field=TENANT_METADATA_KEY,
            )

    def _act_as(
        self, principal: Principal, tenant: str, method: str, context: Context
    ) -> Principal:
        tenant = _tenant_name(tenant, ACT_AS_TENANT_METADATA_KEY)
        if not allows(principal.roles, Permission.TENANTS_ACT_FOR):
            raise permission_denied(
                f"{principal.subject} may not act for another tenant: that needs the permission "
                f"{Permission.TENANTS_ACT_FOR.value} (roles operator, admin)",
                field=ACT_AS_TENANT_METADATA_KEY,
            )
        acting = acting_for(principal, tenant)
        events.acting_for(method, acting, peer=context.peer())
        return acting


def _reset(token: object) -> None:
    # A stream closed from another context cannot reset it; its task ends anyway.
    with contextlib.suppress(ValueError):
        reset_principal(token)
