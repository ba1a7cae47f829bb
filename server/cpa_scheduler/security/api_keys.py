"""API keys and agent tokens: their format, their hash, their record and where they are kept.

A key reads `cpa_<key_id>_<secret>`: key_id (12 hex digits) is public and finds the record;
secret (43 characters of `secrets.token_urlsafe(32)`, 256 random bits) is shown once and kept
only as its SHA-256. A plain, fast hash is enough here, unlike for passwords: a salted slow hash
protects guessable secrets, and 256 random bits cannot be guessed or brute-forced from the hash,
while a slow hash would cost CPU on every cache miss.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .principal import Role

KEY_PREFIX = "cpa_"
_KEY_ID_HEX_DIGITS = 12
_KEY_PATTERN = re.compile(r"cpa_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})")
_KEY_ID_PATTERN = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key (never its secret)."""

    key_id: str
    tenant: str
    roles: frozenset[Role]
    secret_sha256: str
    description: str
    created_by: str
    create_time: datetime
    revoke_time: datetime | None = None
    agent_actions: tuple[str, ...] = ()
    agent_capabilities: tuple[str, ...] = ()

    @property
    def revoked(self) -> bool:
        return self.revoke_time is not None

    def matches(self, secret: str) -> bool:
        """Whether `secret` is this key's (constant time)."""
        return hmac.compare_digest(self.secret_sha256, hash_secret(secret))


class ApiKeyStore(Protocol):
    """Where keys are kept: both stores implement it (storage/*_api_keys.py)."""

    async def create_api_key(self, key: ApiKey) -> None: ...

    async def get_api_key(self, key_id: str) -> ApiKey | None: ...

    async def list_api_keys(
        self,
        tenant: str | None,
        *,
        after: tuple[datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[ApiKey]:
        """The keys of `tenant` (every tenant's with None), newest first (create_time, then
        key_id, both descending); with `after` (create_time, key_id), those after that place;
        at most `limit`."""
        ...

    async def revoke_api_key(self, tenant: str, key_id: str, when: datetime) -> ApiKey | None:
        """Marks the key of `tenant` revoked at `when` (kept if it already was); the key, or
        None when `tenant` has no such key."""
        ...


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str, str]:
    """A fresh key: (key_id, the full secret to show once, its SHA-256)."""
    key_id = secrets.token_hex(_KEY_ID_HEX_DIGITS // 2)
    secret = secrets.token_urlsafe(32)
    full = f"{KEY_PREFIX}{key_id}_{secret}"
    return key_id, full, hash_secret(full)


def parse_key(presented: str) -> str | None:
    """The key_id of a well-formed key, else None (the secret itself is never echoed)."""
    match = _KEY_PATTERN.fullmatch(presented)
    return match.group(1) if match else None


def is_key_id(value: str) -> bool:
    """Whether `value` has the form of a key_id (12 lowercase hex digits)."""
    return _KEY_ID_PATTERN.fullmatch(value) is not None


def roles_text(roles: Sequence[Role] | frozenset[Role]) -> str:
    """Roles as stored: sorted, comma-separated."""
    return ",".join(sorted(role.value for role in roles))


def roles_from_text(text: str) -> frozenset[Role]:
    return frozenset(Role(part) for part in text.split(",") if part)
