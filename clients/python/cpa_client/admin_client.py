"""AdminClient: API keys and agent tokens (cpa.admin.v1.AdminService), raising CpaError."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from cpa.admin.v1 import admin_service_pb2, admin_service_pb2_grpc

from .channels import ClientTls, credential_metadata, open_channel
from .rate_limits import RateLimitRetry
from .scheduler_client import call_pages, call_unary

_R = TypeVar("_R")


class AdminClient:
    """Manages the keys of the caller's tenant (or, with `act_as_tenant`, another's)."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        act_as_tenant: str = "",
        channel: grpc.aio.Channel | None = None,
        tls: ClientTls | None = None,
        timeout_s: float | None = 30.0,
        rate_limit_retry: RateLimitRetry = RateLimitRetry(),  # noqa: B008 (frozen)
    ) -> None:
        """As SchedulerClient's: `tls` for the channel it opens, `api_key` sent with every call,
        `rate_limit_retry` for calls refused with RATE_LIMITED."""
        self._channel = channel or open_channel(target, tls=tls)
        self._owns_channel = channel is None
        self._stub = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        extra: Mapping[str, str] = {"x-cpa-act-as-tenant": act_as_tenant} if act_as_tenant else {}
        self._metadata = credential_metadata(api_key, extra)
        self._timeout_s = timeout_s
        self._rate_limit_retry = rate_limit_retry

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._owns_channel:
            await self._channel.close(grace=None)

    async def create_api_key(
        self,
        roles: Sequence[admin_service_pb2.Role.ValueType],
        *,
        description: str = "",
        agent_actions: Sequence[str] = (),
        agent_capabilities: Sequence[str] = (),
    ) -> admin_service_pb2.CreateApiKeyResponse:
        """A new key; its secret is in the answer, and nowhere else."""
        request = admin_service_pb2.CreateApiKeyRequest(
            roles=roles,
            description=description,
            agent_actions=agent_actions,
            agent_capabilities=agent_capabilities,
        )
        return await self._call(self._stub.CreateApiKey, request)

    async def list_api_keys(self, *, page_size: int = 0) -> list[admin_service_pb2.ApiKey]:
        """Every key of the tenant, newest first, read `page_size` at a time (0: the server's
        default, 1000)."""
        keys: list[admin_service_pb2.ApiKey] = []
        async for page in call_pages(
            self._stub.ListApiKeys,
            admin_service_pb2.ListApiKeysRequest(page_size=page_size),
            metadata=self._metadata,
            timeout_s=self._timeout_s,
            rate_limit_retry=self._rate_limit_retry,
        ):
            keys.extend(page.keys)
        return keys

    async def revoke_api_key(self, key_id: str) -> admin_service_pb2.ApiKey:
        response = await self._call(
            self._stub.RevokeApiKey, admin_service_pb2.RevokeApiKeyRequest(key_id=key_id)
        )
        return response.key

    async def _call(self, method: Callable[..., Awaitable[_R | None]], request: Any) -> _R:
        return await call_unary(
            method,
            request,
            metadata=self._metadata,
            timeout_s=self._timeout_s,
            rate_limit_retry=self._rate_limit_retry,
        )
