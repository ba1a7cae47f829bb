"""The address a call comes from, for per-address limits: the TCP peer, or, when the peer is a
proxy the operator trusts (CPA_TRUSTED_PROXIES), the client that proxy names in
`x-forwarded-for`.

Anyone can send an `x-forwarded-for` header; only a trusted proxy's word counts. The header is
read from the right (each proxy appends the address it got the call from): entries of trusted
proxies are skipped and the first other one is the client. What a client wrote into the header
itself lies further left and is never reached, so a forged header changes nothing. IPv6
clients are counted by their /64 network: one host usually holds a whole /64.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR_KEY = "x-forwarded-for"
_IPV6_CLIENT_PREFIX = 64


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks; ValueError naming the entry at fault."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"CPA_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR network"
            ) from None
    return tuple(networks)


def _parse_address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port or [v6]
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def peer_address(peer: str) -> Address | None:
    """The IP address of a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`); None for
    others (a Unix socket)."""
    kind, _, where = peer.partition(":")
    return _parse_address(where) if kind in ("ipv4", "ipv6") else None


def _trusted(address: Address, proxies: Sequence[Network]) -> bool:
    return any(address in network for network in proxies)


def client_key(peer: str, forwarded_for: Iterable[str], proxies: Sequence[Network]) -> str:
    """The limiting key of a call's source: an IPv4 address, an IPv6 /64, or the raw peer
    string when it is no IP address."""
    address = peer_address(peer)
    if address is None:
        return peer
    if proxies and _trusted(address, proxies):
        hops = [hop for header in forwarded_for for hop in header.split(",")]
        for hop in reversed(hops):
            named = _parse_address(hop)
            if named is None:
                break  # a garbled entry: the nearest proxy's word ends here
            address = named
            if not _trusted(named, proxies):
                break
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, _IPV6_CLIENT_PREFIX), strict=False))
    return str(address)
