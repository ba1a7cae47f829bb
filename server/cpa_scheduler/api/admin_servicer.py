"""AdminService: API keys and agent tokens of the caller's tenant (docs/SECURITY.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc.aio

from cpa.admin.v1 import admin_service_pb2 as pb
from cpa.admin.v1 import admin_service_pb2_grpc
from cpa_scheduler.audit import AuditLog
from cpa_scheduler.domain import DomainError, InvalidArgument, PagePosition, Reason
from cpa_scheduler.security import Principal, Role, current_principal
from cpa_scheduler.security.api_keys import ApiKey, ApiKeyStore, is_key_id, new_secret

from .audit_calls import audited, current_call
from .errors import translate_errors
from .page_token import PageTokens, TokenKind, fingerprint_query, page_size

Context = grpc.aio.ServicerContext[Any, Any]

_MAX_DESCRIPTION_CHARS = 256
_MAX_PATTERN_CHARS = 128
_MAX_PATTERNS = 256
# ListApiKeys' page size: its default too, so a client from before paging sees what it did.
_PAGE_MAX = 1000

ROLE_TO_PROTO = {
    Role.VIEWER: pb.ROLE_VIEWER,
    Role.SUBMITTER: pb.ROLE_SUBMITTER,
    Role.APPROVER: pb.ROLE_APPROVER,
    Role.OPERATOR: pb.ROLE_OPERATOR,
    Role.ADMIN: pb.ROLE_ADMIN,
    Role.AGENT: pb.ROLE_AGENT,
}
ROLE_FROM_PROTO = {value: role for role, value in ROLE_TO_PROTO.items()}


def key_to_proto(key: ApiKey) -> pb.ApiKey:
    message = pb.ApiKey(
        key_id=key.key_id,
        tenant=key.tenant,
        roles=sorted(ROLE_TO_PROTO[role] for role in key.roles),
        description=key.description,
        created_by=key.created_by,
        agent_actions=key.agent_actions,
        agent_capabilities=key.agent_capabilities,
    )
    message.create_time.FromDatetime(key.create_time)
    if key.revoke_time is not None:
        message.revoke_time.FromDatetime(key.revoke_time)
    return message


def _roles(values: Sequence[int]) -> frozenset[Role]:
    if not values:
        raise InvalidArgument(
            "roles: name at least one role", reason=Reason.MISSING_FIELD, field="roles"
        )
    roles = set()
    for index, value in enumerate(values):
        role = ROLE_FROM_PROTO.get(value)  # type: ignore[call-overload]
        if role is None:
            raise InvalidArgument(
                f"roles[{index}]: {value} is no role (VIEWER, SUBMITTER, APPROVER, OPERATOR, "
                "ADMIN or AGENT)",
                field=f"roles[{index}]",
            )
        roles.add(role)
    if Role.AGENT in roles and len(roles) > 1:
        raise InvalidArgument(
            "roles: AGENT stands alone (an agent token is no caller's key)", field="roles"
        )
    return frozenset(roles)


def _patterns(values: Sequence[str], field: str) -> tuple[str, ...]:
    if len(values) > _MAX_PATTERNS:
        raise InvalidArgument(f"{field}: at most {_MAX_PATTERNS} patterns", field=field)
    for index, value in enumerate(values):
        if not value or len(value) > _MAX_PATTERN_CHARS or not value.isprintable():
            raise InvalidArgument(
                f"{field}[{index}]: a pattern is 1 to {_MAX_PATTERN_CHARS} printable characters",
                field=f"{field}[{index}]",
            )
    return tuple(values)


def new_key(
    request: pb.CreateApiKeyRequest, *, tenant: str, created_by: str, now: datetime
) -> tuple[ApiKey, str]:
    """A new key as `request` asks (checked: InvalidArgument naming the field at fault) and its
    secret; not stored. CreateApiKey's, and `cpa keys create --bootstrap`'s."""
    roles = _roles(request.roles)
    # Printable only: a NUL would fail PostgreSQL's text (INTERNAL), and control characters
    # would garble `cpa keys list` and logs.
    if len(request.description) > _MAX_DESCRIPTION_CHARS or not request.description.isprintable():
        raise InvalidArgument(
            f"description: at most {_MAX_DESCRIPTION_CHARS} printable characters",
            field="description",
        )
    actions = _patterns(request.agent_actions, "agent_actions")
    capabilities = _patterns(request.agent_capabilities, "agent_capabilities")
    if Role.AGENT in roles and not actions:
        raise InvalidArgument(
            "agent_actions: an agent token must allow at least one action (`*`: any)",
            reason=Reason.MISSING_FIELD,
            field="agent_actions",
        )
    if Role.AGENT not in roles and (actions or capabilities):
        field = "agent_actions" if actions else "agent_capabilities"
        raise InvalidArgument(f"{field}: only for keys of role AGENT", field=field)
    key_id, secret, digest = new_secret()
    key = ApiKey(
        key_id=key_id,
        tenant=tenant,
        roles=roles,
        secret_sha256=digest,
        description=request.description,
        created_by=created_by,
        create_time=now,
        agent_actions=actions,
        agent_capabilities=capabilities,
    )
    return key, secret


def _described(key: ApiKey) -> str:
    """The key as its audit entry names it: id and roles, never the secret."""
    roles = ", ".join(sorted(role.value for role in key.roles))
    return f"key {key.key_id} ({roles})"


def _caller() -> Principal:
    principal = current_principal()
    if principal is None:  # the interceptor always sets it for AdminService
        raise DomainError("no caller", reason=Reason.UNAUTHENTICATED)
    return principal


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    """Keys live in the store; replicas learn of a revocation within their cache's TTL."""

    def __init__(
        self,
        keys: ApiKeyStore,
        *,
        audit_log: AuditLog,
        default_tenant: str,
        page_tokens: PageTokens,
        forget: Callable[[str], None] = lambda key_id: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._keys = keys
        self._audit_log = audit_log
        self._default_tenant = default_tenant
        self._page_tokens = page_tokens
        # This replica's cache drops a revoked key at once; the others within their TTL.
        self._forget = forget
        self._clock = clock

    @property
    def audit_log(self) -> AuditLog:
        return self._audit_log

    @property
    def default_tenant(self) -> str:
        return self._default_tenant

    @translate_errors
    @audited("CreateApiKey")
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        caller = _caller()
        key, secret = new_key(
            request, tenant=caller.tenant, created_by=caller.subject, now=self._clock()
        )
        await self._keys.create_api_key(key)
        await self._audit_log.recorded(
            current_call(), reason=key.description, message=f"created {_described(key)}"
        )
        return pb.CreateApiKeyResponse(key=key_to_proto(key), secret=secret)

    @translate_errors
    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        tenant = _caller().tenant
        limit = page_size(request.page_size, default=_PAGE_MAX, maximum=_PAGE_MAX)
        query = fingerprint_query("api_keys")
        after = None
        if request.page_token:
            position = self._page_tokens.time_id_position(
                request.page_token, tenant=tenant, query_fingerprint=query, kind=TokenKind.API_KEYS
            )
            after = (position.create_time, position.job_id)
        # One more than the page: whether a next page exists without an empty last page.
        found = await self._keys.list_api_keys(tenant, after=after, limit=limit + 1)
        page = found[:limit]
        response = pb.ListApiKeysResponse(keys=[key_to_proto(key) for key in page])
        if len(found) > limit:
            last = page[-1]
            response.next_page_token = self._page_tokens.time_id_token(
                PagePosition(create_time=last.create_time, job_id=last.key_id),
                tenant=tenant,
                query_fingerprint=query,
                kind=TokenKind.API_KEYS,
            )
        return response

    @translate_errors
    @audited("RevokeApiKey")
    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Context
    ) -> pb.RevokeApiKeyResponse:
        if not request.key_id:
            raise InvalidArgument("key_id is required", reason=Reason.MISSING_FIELD, field="key_id")
        if not is_key_id(request.key_id):
            # Not echoed: a caller may paste a whole secret (`cpa_<key_id>_<secret>`) here.
            raise InvalidArgument(
                "key_id: a key_id is 12 lowercase hex digits (the part after `cpa_` of a key; "
                "`cpa keys list` shows them)",
                field="key_id",
            )
        key = await self._keys.revoke_api_key(_caller().tenant, request.key_id, self._clock())
        if key is None:
            raise DomainError(
                "no API key of this tenant has that key_id", reason=Reason.API_KEY_NOT_FOUND
            )
        self._forget(key.key_id)
        await self._audit_log.recorded(
            current_call(), reason=key.description, message=f"revoked {_described(key)}"
        )
        return pb.RevokeApiKeyResponse(key=key_to_proto(key))
