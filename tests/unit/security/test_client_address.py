"""Which address a call is limited by: the peer, unless a trusted proxy names the client; a
forged x-forwarded-for from anyone else changes nothing (hostile cases)."""

from __future__ import annotations

import re

import pytest

from cpa_scheduler.security.client_address import client_key, parse_trusted_proxies

GATEWAY = parse_trusted_proxies("127.0.0.1/32, 10.0.0.0/8")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # No trusted proxy: the peer, whatever the header says.
        ("ipv4:203.0.113.7:5555", ["198.51.100.1"], "203.0.113.7"),
        # A trusted proxy's word: the last entry it appended.
        ("ipv4:127.0.0.1:40000", ["198.51.100.1"], "198.51.100.1"),
        # The client forged entries on the left; the proxy appended the real one.
        ("ipv4:127.0.0.1:40000", ["1.1.1.1, 2.2.2.2, 198.51.100.1"], "198.51.100.1"),
        # A chain of trusted proxies is skipped; two header lines count as one list.
        ("ipv4:127.0.0.1:40000", ["198.51.100.1, 10.1.2.3", "10.9.9.9"], "198.51.100.1"),
        # Garbage where the proxy's entry should be: the proxy itself is the client.
        ("ipv4:127.0.0.1:40000", ["198.51.100.1, not-an-ip"], "127.0.0.1"),
        # Garbage the client wrote further left is never reached.
        ("ipv4:127.0.0.1:40000", ["<script>, 198.51.100.1"], "198.51.100.1"),
        # A trusted proxy without a header: the proxy.
        ("ipv4:127.0.0.1:40000", [], "127.0.0.1"),
        # Entries with ports, IPv6 in brackets.
        ("ipv4:127.0.0.1:40000", ["198.51.100.1:8443"], "198.51.100.1"),
        ("ipv4:127.0.0.1:40000", ["[2001:db8:1:2::5]:443"], "2001:db8:1:2::/64"),
        # IPv6 peers by /64; v4-mapped ones as IPv4.
        ("ipv6:[2001:db8:1:2:aaaa::1]:5555", [], "2001:db8:1:2::/64"),
        ("ipv6:[::ffff:192.0.2.9]:5555", [], "192.0.2.9"),
        # Not an IP peer (a Unix socket): the peer string.
        ("unix:/tmp/cpa.sock", ["198.51.100.1"], "unix:/tmp/cpa.sock"),
    ],
)
def test_client_key(peer: str, forwarded: list[str], expected: str) -> None:
    assert client_key(peer, forwarded, GATEWAY) == expected


def test_a_forged_header_from_an_untrusted_peer_is_ignored_without_proxies() -> None:
    assert client_key("ipv4:127.0.0.1:1", ["198.51.100.1"], ()) == "127.0.0.1"


def test_a_bad_proxy_entry_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33'")):
        parse_trusted_proxies("127.0.0.1, 10.0.0.0/33")
    assert parse_trusted_proxies(" , ") == ()
