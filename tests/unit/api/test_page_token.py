"""Page tokens (AIP-158): round trips, every refusal with its reason and message, signing with
rotated secrets, tenants and lists kept apart, page sizes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cpa_scheduler.api.list_filter import format_job_filter, parse_job_filter
from cpa_scheduler.api.page_token import (
    TOKEN_VERSION,
    PageTokens,
    TokenKind,
    fingerprint_query,
    page_size,
)
from cpa_scheduler.domain import InvalidArgument, PagePosition, Reason

QUERY = fingerprint_query("jobs", "state = FAILED")
POSITION = PagePosition(
    create_time=datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC), job_id="job-7f3a"
)
MALFORMED = "page_token: malformed; pass the previous response's next_page_token unchanged"
CHECKSUM_MISMATCH = (
    "page_token: signature mismatch: the token was altered, or not issued by this deployment "
    "(or under a secret it no longer has); list again without page_token"
)
SECRET = b"the current secret, 32 bytes ..."
OLD_SECRET = b"the previous secret, still valid"
TOKENS = PageTokens([SECRET, OLD_SECRET])
TENANT = "tenant-a"


def encode_page_token(position: PagePosition, *, query_fingerprint: str) -> str:
    return TOKENS.time_id_token(position, tenant=TENANT, query_fingerprint=query_fingerprint)


def decode_page_token(token: str, *, query_fingerprint: str) -> PagePosition:
    return TOKENS.time_id_position(token, tenant=TENANT, query_fingerprint=query_fingerprint)


def _refusal(token: str, query: str = QUERY) -> str:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, query_fingerprint=query)
    assert caught.value.reason is Reason.INVALID_PAGE_TOKEN
    assert caught.value.field == "page_token"
    return caught.value.message


def _payload(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return decoded


def _token(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _resealed(payload: dict[str, Any], secret: bytes = SECRET) -> str:
    """`payload` signed with `secret`, as another server version might issue it."""
    body = {key: value for key, value in payload.items() if key != "m"}
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return _token({**body, "m": hmac.new(secret, raw, hashlib.sha256).hexdigest()[:32]})


def test_round_trip_keeps_the_position_to_the_microsecond() -> None:
    token = encode_page_token(POSITION, query_fingerprint=QUERY)
    assert decode_page_token(token, query_fingerprint=QUERY) == POSITION


def test_token_is_url_safe_without_padding_and_small() -> None:
    token = encode_page_token(
        PagePosition(create_time=POSITION.create_time, job_id="j?/+" * 8),
        query_fingerprint=QUERY,
    )
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(token) < 256
    assert _payload(token)["v"] == TOKEN_VERSION


def test_other_time_zones_decode_as_the_same_instant_in_utc() -> None:
    berlin = timezone(timedelta(hours=1))
    position = PagePosition(create_time=datetime(2026, 1, 1, 1, tzinfo=berlin), job_id="j")
    decoded = decode_page_token(
        encode_page_token(position, query_fingerprint=QUERY), query_fingerprint=QUERY
    )
    assert decoded == PagePosition(create_time=datetime(2026, 1, 1, tzinfo=UTC), job_id="j")
    assert decoded.create_time.tzinfo is UTC


def test_positions_before_1970_round_trip() -> None:
    position = PagePosition(create_time=datetime(1901, 1, 1, 0, 0, 0, 1, tzinfo=UTC), job_id="j")
    token = encode_page_token(position, query_fingerprint=QUERY)
    assert decode_page_token(token, query_fingerprint=QUERY) == position


def test_naive_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        encode_page_token(
            PagePosition(create_time=datetime(2026, 1, 1), job_id="j"), query_fingerprint=QUERY
        )


def test_fingerprint_depends_on_every_part_and_their_boundaries() -> None:
    assert fingerprint_query("jobs", "x") == fingerprint_query("jobs", "x")
    assert fingerprint_query("jobs", "x") != fingerprint_query("agents", "x")
    assert fingerprint_query("ab", "c") != fingerprint_query("a", "bc")
    assert len(fingerprint_query()) == 16


def test_the_same_filter_spelled_differently_keeps_its_tokens_valid() -> None:
    def query(text: str) -> str:
        return fingerprint_query("jobs", format_job_filter(parse_job_filter(text)))

    token = encode_page_token(POSITION, query_fingerprint=query('state=failed and intent="x"'))
    decoded = decode_page_token(token, query_fingerprint=query('intent = "x" AND state = FAILED'))
    assert decoded == POSITION


def test_long_query_text_keeps_the_token_small() -> None:
    query = 'intent = "' + "x" * 2037 + '"'
    token = encode_page_token(POSITION, query_fingerprint=query)
    assert len(token) < 256
    assert decode_page_token(token, query_fingerprint=query) == POSITION
    assert _refusal(token, query + " ") != MALFORMED


def test_token_of_another_filter_is_refused() -> None:
    token = encode_page_token(POSITION, query_fingerprint=QUERY)
    assert _refusal(token, fingerprint_query("jobs", "state = CANCELLED")) == (
        "page_token: issued for a different filter; keep the filter unchanged while paging, "
        "or list again without page_token"
    )


def test_other_version_is_refused_by_name() -> None:
    payload = _payload(encode_page_token(POSITION, query_fingerprint=QUERY))
    token = _resealed({**payload, "v": 3})
    assert _refusal(token) == (
        "page_token: version 3 is not supported (this server reads version 2); "
        "list again without page_token"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"t": 0},
        {"id": "job-other"},
        {"q": "0" * 16},
        {"n": "0" * 16},
        {"k": "agents"},
        {"m": "0" * 32},
    ],
)
def test_altered_token_fails_its_checksum(change: dict[str, Any]) -> None:
    payload = _payload(encode_page_token(POSITION, query_fingerprint=QUERY))
    assert _refusal(_token({**payload, **change})) == (CHECKSUM_MISMATCH)


def test_token_without_checksum_fails_its_checksum() -> None:
    payload = _payload(encode_page_token(POSITION, query_fingerprint=QUERY))
    del payload["m"]
    assert _refusal(_token(payload)) == (CHECKSUM_MISMATCH)


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "a",  # not a whole base64 quantum
        "x" * 2000,
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
        base64.urlsafe_b64encode(b"{not json").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),  # JSON, not an object
        base64.urlsafe_b64encode(b"{}").decode(),  # no version
        base64.urlsafe_b64encode(b'{"v": "1"}').decode(),
        base64.urlsafe_b64encode(b'{"v": true}').decode(),
        "eyJ2IjoxfQ==",  # padding is not part of our alphabet
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    assert _refusal(token) == MALFORMED


@pytest.mark.parametrize(
    "change",
    [
        {"t": "2026-01-01T00:00:00Z"},
        {"t": 1.5},
        {"t": 10**30},  # beyond the year 9999
        {"id": 42},
        {"extra": 1},
    ],
)
def test_well_sealed_but_wrong_fields_are_malformed(change: dict[str, Any]) -> None:
    payload = _payload(encode_page_token(POSITION, query_fingerprint=QUERY))
    assert _refusal(_resealed({**payload, **change})) == MALFORMED


def test_a_token_signed_with_a_secret_not_configured_is_refused() -> None:
    payload = _payload(encode_page_token(POSITION, query_fingerprint=QUERY))
    assert _refusal(_resealed(payload, b"not one of the server's secrets")) == CHECKSUM_MISMATCH


def test_tokens_of_an_older_secret_still_verify_and_new_ones_use_the_first() -> None:
    before_rotation = PageTokens([OLD_SECRET])
    token = before_rotation.time_id_token(POSITION, tenant=TENANT, query_fingerprint=QUERY)
    assert decode_page_token(token, query_fingerprint=QUERY) == POSITION
    new = encode_page_token(POSITION, query_fingerprint=QUERY)
    assert new == _resealed(_payload(new), SECRET)
    with pytest.raises(InvalidArgument):  # the old secret dropped: its tokens end
        PageTokens([SECRET]).time_id_position(token, tenant=TENANT, query_fingerprint=QUERY)


def test_a_token_of_another_tenant_is_refused() -> None:
    token = encode_page_token(POSITION, query_fingerprint=QUERY)
    with pytest.raises(InvalidArgument) as caught:
        TOKENS.time_id_position(token, tenant="tenant-b", query_fingerprint=QUERY)
    assert caught.value.reason is Reason.INVALID_PAGE_TOKEN
    assert caught.value.message == (
        "page_token: issued to another tenant; list again without page_token"
    )


def test_agents_tokens_have_their_own_cursor_and_the_lists_refuse_each_others() -> None:
    agents = fingerprint_query("agents", "")
    token = TOKENS.agents_token("agent-7", tenant=TENANT, query_fingerprint=agents)
    assert set(_payload(token)) == {"v", "k", "q", "n", "a", "m"}
    assert TOKENS.agents_after(token, tenant=TENANT, query_fingerprint=agents) == "agent-7"
    with pytest.raises(InvalidArgument, match="issued by ListAgents, not ListJobs"):
        TOKENS.time_id_position(token, tenant=TENANT, query_fingerprint=agents)
    jobs = encode_page_token(POSITION, query_fingerprint=agents)
    with pytest.raises(InvalidArgument, match="issued by ListJobs, not ListAgents"):
        TOKENS.agents_after(jobs, tenant=TENANT, query_fingerprint=agents)


def test_api_key_tokens_and_job_tokens_refuse_each_other() -> None:
    query = fingerprint_query("api_keys")
    keys = TOKENS.time_id_token(
        POSITION, tenant=TENANT, query_fingerprint=query, kind=TokenKind.API_KEYS
    )
    assert (
        TOKENS.time_id_position(
            keys, tenant=TENANT, query_fingerprint=query, kind=TokenKind.API_KEYS
        )
        == POSITION
    )
    with pytest.raises(InvalidArgument, match="issued by ListApiKeys, not ListJobs"):
        TOKENS.time_id_position(keys, tenant=TENANT, query_fingerprint=query)
    jobs = TOKENS.time_id_token(POSITION, tenant=TENANT, query_fingerprint=query)
    with pytest.raises(InvalidArgument, match="issued by ListJobs, not ListApiKeys"):
        TOKENS.time_id_position(
            jobs, tenant=TENANT, query_fingerprint=query, kind=TokenKind.API_KEYS
        )


@pytest.mark.parametrize("secrets", [[], [b"short"]])
def test_missing_or_short_secrets_are_a_programming_error(secrets: list[bytes]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        PageTokens(secrets)


def test_truncated_token_is_refused() -> None:
    token = encode_page_token(POSITION, query_fingerprint=QUERY)
    assert _refusal(token[:-6]) == MALFORMED
    assert _refusal(token[:-1]) == MALFORMED


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(0, 50), (1, 1), (50, 50), (999, 999), (1000, 1000), (1001, 1000), (2**31 - 1, 1000)],
)
def test_page_size_defaults_and_clamps(requested: int, expected: int) -> None:
    assert page_size(requested, default=50, maximum=1000) == expected


def test_negative_page_size_is_an_invalid_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1, default=50, maximum=1000)
    assert caught.value.reason is Reason.INVALID_FIELD
    assert caught.value.field == "page_size"
    assert caught.value.message == "page_size must not be negative (got -1)"
