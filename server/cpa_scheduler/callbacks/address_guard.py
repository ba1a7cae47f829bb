"""Which callback URLs and addresses the scheduler may POST to (the SSRF guard).

A callback URL is caller input: without a guard, a caller could make the scheduler POST into the
network it runs in (a cloud metadata endpoint, a database's HTTP port). The URL is checked when
the job is submitted (its form, and the address when the host is a literal IP), and every
address its host resolves to is checked again at delivery, where the connection goes only to a
checked address (sender.py), so a name that resolves differently later (DNS rebinding) gains
nothing. docs/CALLBACKS.md, "SSRF guard".
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from cpa_scheduler.domain import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_CALLBACK_URL_BYTES: Final = 2048
_HOST_CHARACTERS: Final = frozenset(string.ascii_letters + string.digits + "-.")


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Addresses that are not public are refused unless `allow_private`, or unless one of
    `allowed_networks` holds them (CPA_CALLBACK_ALLOW_PRIVATE, CPA_CALLBACK_ALLOWED_NETWORKS)."""

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def of(cls, *, allow_private: bool, allowed_networks: str) -> AddressPolicy:
        """From the settings; ValueError naming a CIDR that does not parse."""
        networks = []
        for part in allowed_networks.split(","):
            if part.strip():
                try:
                    networks.append(ipaddress.ip_network(part.strip(), strict=False))
                except ValueError as error:
                    raise ValueError(f"CPA_CALLBACK_ALLOWED_NETWORKS: {error}") from None
        return cls(allow_private=allow_private, allowed_networks=tuple(networks))

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be called, or None when it may."""
        if self.allow_private or any(address in net for net in self.allowed_networks):
            return None
        checked = address
        if isinstance(address, ipaddress.IPv6Address):
            # ::ffff:127.0.0.1 reaches 127.0.0.1: judge the IPv4 address it carries.
            mapped = address.ipv4_mapped or address.sixtofour
            if mapped is not None:
                if any(mapped in net for net in self.allowed_networks):
                    return None
                checked = mapped
        kind = _kind(checked)
        if kind is None:
            return None
        return (
            f"{address} is a {kind} address, which callbacks may not reach "
            "(CPA_CALLBACK_ALLOW_PRIVATE, CPA_CALLBACK_ALLOWED_NETWORKS)"
        )

    def first_refusal(self, addresses: Iterable[IPAddress]) -> str | None:
        for address in addresses:
            if (why := self.refusal(address)) is not None:
                return why
        return None


def _kind(address: IPAddress) -> str | None:
    """The kind of a non-public address, or None for a public one."""
    for kind, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-public"


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally (`10.0.0.1`, `[::1]` without brackets)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_callback_url(url: str, field: str, policy: AddressPolicy) -> None:
    """A callback URL as submitted (ScheduleJob's spec.callback_url, a LAM request's
    expected.reply_to): InvalidArgument (INVALID_FIELD, `field`) unless it is an https:// URL
    of at most MAX_CALLBACK_URL_BYTES with a host, without user info, whose host, when a literal
    IP address, the policy allows. Empty means no callback and passes."""
    if not url:
        return
    size = len(url.encode())
    if size > MAX_CALLBACK_URL_BYTES:
        raise InvalidArgument(
            f"the callback URL is {size} bytes; at most {MAX_CALLBACK_URL_BYTES} are accepted",
            field=field,
        )
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidArgument("the callback URL holds spaces or control characters", field=field)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise InvalidArgument(f"the callback URL does not parse: {error}", field=field) from None
    if parts.scheme != "https":
        raise InvalidArgument("the callback URL must be an https:// URL", field=field)
    host = parts.hostname or ""
    if not host:
        raise InvalidArgument("the callback URL names no host", field=field)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidArgument(
            "the callback URL must not carry user info (user:password@)", field=field
        )
    if port == 0:
        raise InvalidArgument("the callback URL's port must be 1-65535", field=field)
    address = literal_address(host)
    if address is None:
        if not set(host) <= _HOST_CHARACTERS or ".." in host or host.startswith((".", "-")):
            raise InvalidArgument(
                "the callback URL's host must be a DNS name (letters, digits, '-', '.'; "
                "internationalized names in their xn-- form) or an IP address",
                field=field,
            )
        top = host.rstrip(".").rsplit(".", 1)[-1].lower()
        if top.isdigit() or top.startswith("0x"):
            # 127.1, 2130706433, 0x7f000001: legacy forms of IPv4 addresses that resolvers
            # accept; only the canonical dotted form is judged as an address.
            raise InvalidArgument(
                "the callback URL's host is a legacy numeric form of an IPv4 address; write "
                "the address as a.b.c.d",
                field=field,
            )
        return
    if (why := policy.refusal(address)) is not None:
        raise InvalidArgument(f"the callback URL is refused: {why}", field=field)
