"""Opaque page tokens (AIP-158) for list RPCs, and page-size clamping.

A token is URL-safe base64 of a small JSON payload (version, query fingerprint, position, checksum);
it is no security boundary: queries enforce the tenant, the checksum only catches damage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import string
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cpa_scheduler.domain import InvalidArgument, PagePosition, Reason

__all__ = [
    "TOKEN_VERSION",
    "decode_page_token",
    "encode_page_token",
    "fingerprint_query",
    "page_size",
]

TOKEN_VERSION: Final = 1
# Our tokens are about 150 characters; anything far longer is not one of ours.
_MAX_TOKEN_LENGTH = 1024
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
_PAYLOAD_KEYS = frozenset({"v", "q", "t", "id"})


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


def _query_digest(query_fingerprint: str) -> str:
    # Stored hashed, so a caller may pass the filter text itself and tokens stay small.
    return hashlib.sha256(query_fingerprint.encode()).hexdigest()[:16]


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _checksum(payload: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(payload)).hexdigest()[:8]


def encode_page_token(position: PagePosition, *, query_fingerprint: str) -> str:
    """The token for the page that starts after `position`, valid only for the same query.

    `query_fingerprint` is any text that names the query (see `fingerprint_query`); the token
    holds only a digest of it.
    """
    if position.create_time.tzinfo is None:
        raise ValueError("PagePosition.create_time must be timezone-aware")
    payload: dict[str, Any] = {
        "v": TOKEN_VERSION,
        "q": _query_digest(query_fingerprint),
        # Integer microseconds: exact, unlike a float, and shorter than an RFC 3339 string.
        "t": (position.create_time - _EPOCH) // _ONE_MICROSECOND,
        "id": position.job_id,
    }
    payload["c"] = _checksum(payload)
    return base64.urlsafe_b64encode(_canonical(payload)).rstrip(b"=").decode("ascii")


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


def decode_page_token(token: str, *, query_fingerprint: str) -> PagePosition:
    """The position `token` encodes; InvalidArgument(INVALID_PAGE_TOKEN) says why it is refused."""
    payload = _payload(token)
    version = payload.get("v")
    if type(version) is not int:
        raise _malformed()
    if version != TOKEN_VERSION:
        raise _invalid(
            f"version {version} is not supported (this server reads version {TOKEN_VERSION}); "
            "list again without page_token"
        )
    checksum = payload.pop("c", None)
    if checksum != _checksum(payload):
        raise _invalid("checksum mismatch, the token was altered")
    if payload.get("q") != _query_digest(query_fingerprint):
        raise _invalid(
            "issued for a different filter; keep the filter unchanged while paging, "
            "or list again without page_token"
        )
    micros, job_id = payload.get("t"), payload.get("id")
    if set(payload) != _PAYLOAD_KEYS or type(micros) is not int or not isinstance(job_id, str):
        raise _malformed()
    try:
        create_time = _EPOCH + micros * _ONE_MICROSECOND
    except OverflowError:
        raise _malformed() from None
    return PagePosition(create_time=create_time, job_id=job_id)


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
