"""The pure rules of callback delivery: which statuses retry, Retry-After in both forms, backoff
with full jitter and its cap, the signature (checked with the documented recipe), the SSRF
guard's URL checks and address judgements, and the guarded resolver against real lookups."""

from __future__ import annotations

import ipaddress
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from cpa_scheduler.callbacks.address_guard import AddressPolicy, check_callback_url
from cpa_scheduler.callbacks.backoff import BackoffPolicy, Verdict, parse_retry_after, verdict_of
from cpa_scheduler.callbacks.sender import AddressRefusedError, GuardedResolver
from cpa_scheduler.callbacks.signing import signature
from cpa_scheduler.domain import InvalidArgument, Reason
from tests.fixtures.webhook import documented_verify

NOW = datetime(2026, 12, 8, 10, 0, 0, tzinfo=UTC)
GUARDED = AddressPolicy()


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (400, Verdict.PERMANENT),
        (404, Verdict.PERMANENT),
        (410, Verdict.PERMANENT),
        (301, Verdict.PERMANENT),
        (100, Verdict.RETRY),
    ],
)
def test_statuses(status: int, verdict: Verdict) -> None:
    assert verdict_of(status) is verdict


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Tue, 08 Dec 2026 10:00:30 GMT", 30.0),
        ("Tue, 08 Dec 2026 09:00:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_backoff_is_full_jitter_below_a_doubling_cap_and_honours_retry_after() -> None:
    policy = BackoffPolicy(initial_s=1.0, max_s=10.0)
    rng = random.Random(7)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (80, 10.0)]:
        delays = [policy.delay_s(attempt, rng, retry_after_s=None) for _ in range(200)]
        assert all(0 <= d < cap for d in delays)
        assert max(delays) > cap * 0.8  # spread over the range
        assert min(delays) < cap * 0.2
    assert policy.delay_s(1, rng, retry_after_s=3.0) == 3.0
    assert policy.delay_s(1, rng, retry_after_s=3600.0) == 10.0


def test_the_signature_verifies_with_the_documented_recipe_and_only_untampered() -> None:
    verify = documented_verify()
    body = b'{"id": "m-1"}'
    now = int(time.time())
    header = {"cpa-signature": signature(b"s" * 32, now, body)}
    assert verify(b"s" * 32, header, body)
    assert not verify(b"s" * 32, header, body + b" ")
    assert not verify(b"t" * 32, header, body)
    assert not verify(b"s" * 32, {"cpa-signature": signature(b"s" * 32, now - 3600, body)}, body)
    assert not verify(b"s" * 32, {"cpa-signature": "v1=00"}, body)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused_unless_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert GUARDED.refusal(ip) is not None
    assert AddressPolicy(allow_private=True).refusal(ip) is None
    allowed = AddressPolicy.of(
        allow_private=False,
        allowed_networks=f"{address}/128" if ":" in address else f"{address}/32",
    )
    assert allowed.refusal(ip) is None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "::ffff:93.184.216.34"])
def test_public_addresses_pass(address: str) -> None:
    assert GUARDED.refusal(ipaddress.ip_address(address)) is None


def test_allowed_networks_must_parse() -> None:
    with pytest.raises(ValueError, match="CPA_CALLBACK_ALLOWED_NETWORKS"):
        AddressPolicy.of(allow_private=False, allowed_networks="10.0.0.0/33")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/x", "https://"),
        ("ftp://hooks.example.com/x", "https://"),
        ("https:///x", "no host"),
        ("https://user:pw@hooks.example.com/x", "user info"),
        ("https://user@hooks.example.com/x", "user info"),
        ("https://hooks.example.com:99999/x", "does not parse"),
        ("https://hooks.example.com:0/x", "1-65535"),
        ("https://[::1/x", "does not parse"),
        ("https://hooks example.com/x", "spaces"),
        ("https://hooks.example.com/\x00", "control"),
        ("https://bad_host!.example/x", "DNS name"),
        ("https://127.1/x", "legacy numeric"),
        ("https://2130706433/x", "legacy numeric"),
        ("https://0x7f.0.0.1/x", "legacy numeric"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]:8443/x", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://10.0.0.7/x", "private"),
        ("https://[::ffff:10.0.0.7]/x", "private"),
        ("https://hooks.example.com/" + "a" * 3000, "bytes"),
    ],
)
def test_callback_urls_refused_at_submission(url: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_callback_url(url, "spec.callback_url", GUARDED)
    assert raised.value.reason is Reason.INVALID_FIELD
    assert raised.value.field == "spec.callback_url"
    assert why in raised.value.message


@pytest.mark.parametrize(
    "url",
    [
        "",
        "https://hooks.example.com/x?a=1",
        "https://93.184.216.34:8443/x",
        "https://xn--bcher-kva.example/",
    ],
)
def test_callback_urls_accepted(url: str) -> None:
    check_callback_url(url, "spec.callback_url", GUARDED)


async def test_the_resolver_refuses_a_name_that_resolves_to_loopback() -> None:
    resolver = GuardedResolver(GUARDED)
    try:
        with pytest.raises(AddressRefusedError, match="loopback"):
            await resolver.resolve("localhost", 443)
        allowed = GuardedResolver(
            AddressPolicy.of(allow_private=False, allowed_networks="127.0.0.0/8,::1/128")
        )
        results = await allowed.resolve("localhost", 443)
        assert {r["host"] for r in results} <= {"127.0.0.1", "::1"}
        await allowed.close()
    finally:
        await resolver.close()


def test_future_dates_count_from_now() -> None:
    later = (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(later, now=NOW) == 90.0
