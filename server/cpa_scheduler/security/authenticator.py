"""From a call's metadata to its Principal: API keys (cached per replica), JWTs, or refusal.

Credentials come in metadata `authorization: Bearer <key or JWT>` or `x-api-key: <key>`. A key
is looked up by its public id and compared by hash; what was read is trusted for
`auth_cache_ttl_s`, so a busy caller costs one database read per TTL per replica, and a
revocation reaches every replica within that bound. Messages never repeat a secret.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from cpa_scheduler.domain import DomainError, Reason

from .api_keys import KEY_PREFIX, ApiKey, ApiKeyStore, hash_secret, parse_key
from .errors import unauthenticated
from .jwt_tokens import JwtVerifier
from .principal import CredentialKind, Principal, Role

AUTHORIZATION = "authorization"
API_KEY_HEADER = "x-api-key"
_BEARER = "bearer "
# Bound on the keys remembered (valid, revoked or unknown); beyond it the oldest half is dropped.
_CACHE_MAX_KEYS = 10_000

Metadata = Iterable[tuple[str, Any]]


def presented_credential(metadata: Metadata) -> str | None:
    """The credential of a call's metadata, or None; two different ones are refused."""
    found: list[str] = []
    for key, value in metadata:
        if not isinstance(value, str):
            continue
        if key == AUTHORIZATION:
            if value[: len(_BEARER)].lower() != _BEARER:
                raise unauthenticated(
                    "metadata authorization must be `Bearer <API key or JWT>`",
                    Reason.CREDENTIAL_INVALID,
                )
            found.append(value[len(_BEARER) :].strip())
        elif key == API_KEY_HEADER:
            found.append(value.strip())
    if not found:
        return None
    if any(credential != found[0] for credential in found[1:]):
        raise unauthenticated("the call carries more than one credential; send one")
    if not found[0]:
        raise unauthenticated("the credential in the call's metadata is empty")
    return found[0]


def principal_of_key(key: ApiKey) -> Principal:
    agent = Role.AGENT in key.roles
    return Principal(
        tenant=key.tenant,
        subject=f"{'agent' if agent else 'key'}:{key.key_id}",
        roles=key.roles,
        kind=CredentialKind.AGENT_TOKEN if agent else CredentialKind.API_KEY,
        credential_id=key.key_id,
        allowed_actions=key.agent_actions,
        allowed_capabilities=key.agent_capabilities,
    )


class Authenticator:
    """Resolves credentials; one per replica."""

    def __init__(
        self,
        *,
        keys: ApiKeyStore,
        cache_ttl_s: float,
        jwt: JwtVerifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._ttl_s = cache_ttl_s
        self._jwt = jwt
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._principals: dict[str, tuple[ApiKey, Principal]] = {}
        # Keys of this process only (the local agent of `cpa serve --with-agent`): never stored.
        self._process_keys: dict[str, ApiKey] = {}

    async def authenticate(self, metadata: Metadata) -> Principal:
        credential = presented_credential(metadata)
        if credential is None:
            raise DomainError(
                "this call needs a credential: metadata `authorization: Bearer <API key or JWT>` "
                "or `x-api-key: <API key>` (docs/SECURITY.md)",
                reason=Reason.UNAUTHENTICATED,
            )
        if credential.startswith(KEY_PREFIX):
            key = await self._valid_key(credential)
            # A key's principal is made once per record read (a frozen dataclass costs more to
            # build than the rest of the check); a record read again makes a new one.
            made = self._principals.get(key.key_id)
            if made is None or made[0] is not key:
                made = (key, principal_of_key(key))
                self._principals[key.key_id] = made
            return made[1]
        if credential.count(".") == 2:
            if self._jwt is None:
                raise unauthenticated("this server accepts no JWTs (CPA_JWT_ISSUER is not set)")
            return await self._jwt.verify(credential)
        raise unauthenticated("the credential is neither an API key (cpa_...) nor a JWT")

    async def _valid_key(self, credential: str) -> ApiKey:
        key_id = parse_key(credential)
        if key_id is None:
            raise unauthenticated("the API key is malformed (expected cpa_<key id>_<secret>)")
        key = self._process_keys.get(key_id) or await self._lookup(key_id)
        if key is None or not key.matches(credential):
            raise unauthenticated(f"API key {key_id} is not valid (unknown key id or wrong secret)")
        if key.revoked:
            raise unauthenticated(f"API key {key_id} was revoked", Reason.CREDENTIAL_REVOKED)
        return key

    async def _lookup(self, key_id: str, max_age_s: float | None = None) -> ApiKey | None:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < min(self._ttl_s, max_age_s or self._ttl_s):
            return cached[1]
        key = await self._keys.get_api_key(key_id)
        if len(self._cache) >= _CACHE_MAX_KEYS:
            for stale in list(self._cache)[: _CACHE_MAX_KEYS // 2]:
                del self._cache[stale]
                self._principals.pop(stale, None)
        self._cache[key_id] = (now, key)
        return key

    def forget(self, key_id: str) -> None:
        """Drops what this replica read of a key (its revocation here): read again next time."""
        self._cache.pop(key_id, None)
        self._principals.pop(key_id, None)

    async def still_valid(self, principal: Principal, *, max_age_s: float | None = None) -> bool:
        """Whether the key behind `principal` is still neither revoked nor gone, by what was
        read of it within `max_age_s` (default: the cache's TTL); always True for other kinds
        of credential."""
        if principal.kind not in (CredentialKind.API_KEY, CredentialKind.AGENT_TOKEN):
            return True
        if principal.credential_id in self._process_keys:
            return True
        key = await self._lookup(principal.credential_id, max_age_s)
        return key is not None and not key.revoked

    def process_key(self, tenant: str) -> str:
        """A fresh admin key of `tenant` valid in this process only, until it ends."""
        key_id = secrets.token_hex(6)
        credential = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        self._process_keys[key_id] = ApiKey(
            key_id=key_id,
            tenant=tenant,
            roles=frozenset({Role.ADMIN}),
            secret_sha256=hash_secret(credential),
            description="this process's own (the local agent)",
            created_by="local",
            create_time=datetime.now(UTC),
        )
        return credential


def insecure_local_principal(tenant: str) -> Principal:
    """Authentication off: the named tenant, with every right."""
    return Principal(
        tenant=tenant,
        subject="local",
        roles=frozenset({Role.ADMIN}),
        kind=CredentialKind.INSECURE_LOCAL,
        credential_id="local",
    )


def acting_for(principal: Principal, tenant: str) -> Principal:
    return dataclasses.replace(principal, tenant=tenant, home_tenant=principal.tenant)
