"""Opaque, signed page tokens (AIP-158) for list RPCs, and page-size clamping.

A token is URL-safe base64 of a small JSON payload: version, which list issued it (TokenKind),
its cursor (a (create_time, id) place for ListJobs, ListCallbacks, ListAuditEntries and
ListApiKeys, an agent id for ListAgents, (task, artifact) positions for ListArtifacts), a digest
of the query and of the caller's tenant, and an HMAC-SHA256 of all that under the server's
secret. So a token cannot be forged or altered (the cursor decides where the next page starts),
nor used by another tenant, nor given to another list. Secrets rotate: the first one signs, every
one verifies (settings.page_token_secrets; see docs/CONFIGURATION.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import string
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from cpa_scheduler.domain import InvalidArgument, PagePosition, Reason

__all__ = [
    "TOKEN_VERSION",
    "PageTokens",
    "TokenKind",
    "fingerprint_query",
    "page_size",
]

TOKEN_VERSION: Final = 2
# Our tokens are about 200 characters; anything far longer is not one of ours.
_MAX_TOKEN_LENGTH = 1024
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
# 128 bits of the HMAC: forging one is out of reach; the token stays short.
_MAC_HEX_CHARS = 32
_MIN_SECRET_BYTES = 16


class TokenKind(StrEnum):
    """Which list issued a token, and so what its cursor holds."""

    JOBS = "jobs"
    AGENTS = "agents"
    CALLBACKS = "callbacks"
    AUDIT = "audit"
    ARTIFACTS = "artifacts"
    API_KEYS = "api_keys"


_RPC = {
    TokenKind.JOBS: "ListJobs",
    TokenKind.AGENTS: "ListAgents",
    TokenKind.CALLBACKS: "ListCallbacks",
    TokenKind.AUDIT: "ListAuditEntries",
    TokenKind.ARTIFACTS: "ListArtifacts",
    TokenKind.API_KEYS: "ListApiKeys",
}
_CURSOR_KEYS = {
    TokenKind.JOBS: frozenset({"t", "id"}),
    TokenKind.AGENTS: frozenset({"a"}),
    TokenKind.CALLBACKS: frozenset({"t", "id"}),
    TokenKind.AUDIT: frozenset({"t", "id"}),
    TokenKind.ARTIFACTS: frozenset({"ti", "ai"}),
    TokenKind.API_KEYS: frozenset({"t", "id"}),
}
_COMMON_KEYS = frozenset({"v", "k", "q", "n"})


def _invalid(why: str) -> InvalidArgument:
    return InvalidArgument(
        f"page_token: {why}", reason=Reason.INVALID_PAGE_TOKEN, field="page_token"
    )


def _malformed() -> InvalidArgument:
    return _invalid("malformed; pass the previous response's next_page_token unchanged")


def fingerprint_query(*parts: str) -> str:
    """A short digest of what a list asks for, e.g. `fingerprint_query("jobs", filter_text)`.

    Pass the canonical filter text (`format_job_filter`), not the raw one, so spelling does not
    matter; leave page_size out, which AIP-158 lets change between pages.
    """
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode()
        # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()[:16]


def _digest(text: str) -> str:
    # Stored hashed, so a caller may pass the filter text itself and tokens stay small; the
    # tenant's name is not shown to whoever reads a token either.
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


class PageTokens:
    """Issues and checks the page tokens of one deployment (every replica: the same secrets)."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets or any(len(secret) < _MIN_SECRET_BYTES for secret in secrets):
            raise ValueError(f"page token secrets: at least one, each >= {_MIN_SECRET_BYTES} bytes")
        self._secrets = tuple(secrets)

    def _mac(self, secret: bytes, payload: dict[str, Any]) -> str:
        return hmac.new(secret, _canonical(payload), hashlib.sha256).hexdigest()[:_MAC_HEX_CHARS]

    def _seal(
        self, kind: TokenKind, cursor: dict[str, Any], *, tenant: str, query_fingerprint: str
    ) -> str:
        payload: dict[str, Any] = {
            "v": TOKEN_VERSION,
            "k": kind.value,
            "q": _digest(query_fingerprint),
            "n": _digest(tenant),
            **cursor,
        }
        payload["m"] = self._mac(self._secrets[0], payload)
        return base64.urlsafe_b64encode(_canonical(payload)).rstrip(b"=").decode("ascii")

    def _open(
        self, token: str, kind: TokenKind, *, tenant: str, query_fingerprint: str
    ) -> dict[str, Any]:
        """The payload of a token this deployment issued to `tenant` for this list and query."""
        payload = _payload(token)
        version = payload.get("v")
        if type(version) is not int:
            raise _malformed()
        if version != TOKEN_VERSION:
            raise _invalid(
                f"version {version} is not supported (this server reads version "
                f"{TOKEN_VERSION}); list again without page_token"
            )
        mac = payload.pop("m", None)
        if not isinstance(mac, str) or not any(
            hmac.compare_digest(mac, self._mac(secret, payload)) for secret in self._secrets
        ):
            raise _invalid(
                "signature mismatch: the token was altered, or not issued by this deployment "
                "(or under a secret it no longer has); list again without page_token"
            )
        if payload.get("k") != kind.value:
            issuer = _RPC.get(TokenKind(payload["k"])) if payload.get("k") in _RPC else None
            raise _invalid(
                f"issued by {issuer or 'another list'}, not {_RPC[kind]}; "
                "pass each list its own next_page_token"
            )
        if payload.get("n") != _digest(tenant):
            raise _invalid("issued to another tenant; list again without page_token")
        if payload.get("q") != _digest(query_fingerprint):
            raise _invalid(
                "issued for a different filter; keep the filter unchanged while paging, "
                "or list again without page_token"
            )
        if set(payload) != _COMMON_KEYS | _CURSOR_KEYS[kind]:
            raise _malformed()
        return payload

    def time_id_token(
        self,
        position: PagePosition,
        *,
        tenant: str,
        query_fingerprint: str,
        kind: TokenKind = TokenKind.JOBS,
    ) -> str:
        """The token of the page that starts after `position`, a (create_time, id) place: a
        job's for ListJobs; with `kind`, a delivery's, an audit entry's or a key's (its id as
        `job_id`) for ListCallbacks, ListAuditEntries, ListApiKeys."""
        if position.create_time.tzinfo is None:
            raise ValueError("PagePosition.create_time must be timezone-aware")
        cursor = {
            # Integer microseconds: exact, unlike a float, and shorter than an RFC 3339 string.
            "t": (position.create_time - _EPOCH) // _ONE_MICROSECOND,
            "id": position.job_id,
        }
        return self._seal(kind, cursor, tenant=tenant, query_fingerprint=query_fingerprint)

    def time_id_position(
        self,
        token: str,
        *,
        tenant: str,
        query_fingerprint: str,
        kind: TokenKind = TokenKind.JOBS,
    ) -> PagePosition:
        """The place a time_id_token of `kind` holds; InvalidArgument(INVALID_PAGE_TOKEN) says
        why it is refused."""
        payload = self._open(token, kind, tenant=tenant, query_fingerprint=query_fingerprint)
        micros, job_id = payload["t"], payload["id"]
        if type(micros) is not int or not isinstance(job_id, str):
            raise _malformed()
        try:
            create_time = _EPOCH + micros * _ONE_MICROSECOND
        except OverflowError:
            raise _malformed() from None
        return PagePosition(create_time=create_time, job_id=job_id)

    def artifacts_token(
        self, after: tuple[int, int], *, tenant: str, query_fingerprint: str
    ) -> str:
        """ListArtifacts: the token of the page that starts after position `after` (the task's
        place in the plan, the artifact's in its task's list)."""
        task_index, artifact_index = after
        return self._seal(
            TokenKind.ARTIFACTS,
            {"ti": task_index, "ai": artifact_index},
            tenant=tenant,
            query_fingerprint=query_fingerprint,
        )

    def artifacts_after(
        self, token: str, *, tenant: str, query_fingerprint: str
    ) -> tuple[int, int]:
        """The position a ListArtifacts token's page starts after."""
        payload = self._open(
            token, TokenKind.ARTIFACTS, tenant=tenant, query_fingerprint=query_fingerprint
        )
        task_index, artifact_index = payload["ti"], payload["ai"]
        if not all(type(index) is int and index >= 0 for index in (task_index, artifact_index)):
            raise _malformed()
        return task_index, artifact_index

    def agents_token(self, after_agent_id: str, *, tenant: str, query_fingerprint: str) -> str:
        """ListAgents: the token of the page that starts after agent `after_agent_id`."""
        return self._seal(
            TokenKind.AGENTS,
            {"a": after_agent_id},
            tenant=tenant,
            query_fingerprint=query_fingerprint,
        )

    def agents_after(self, token: str, *, tenant: str, query_fingerprint: str) -> str:
        """The agent id a ListAgents token's page starts after."""
        payload = self._open(
            token, TokenKind.AGENTS, tenant=tenant, query_fingerprint=query_fingerprint
        )
        agent_id = payload["a"]
        if not isinstance(agent_id, str):
            raise _malformed()
        return agent_id


def _payload(token: str) -> dict[str, Any]:
    if len(token) > _MAX_TOKEN_LENGTH or not set(token) <= _TOKEN_CHARS:
        raise _malformed()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _malformed() from None
    if not isinstance(payload, dict):
        raise _malformed()
    return payload


def page_size(requested: int, *, default: int, maximum: int) -> int:
    """The page size to use: 0 means `default`, more than `maximum` means `maximum` (AIP-158)."""
    if requested < 0:
        raise InvalidArgument(
            f"page_size must not be negative (got {requested})",
            reason=Reason.INVALID_FIELD,
            field="page_size",
        )
    if requested == 0:
        return default
    return min(requested, maximum)
