"""One POST of a callback over HTTPS, to checked addresses only.

The connector resolves the host through `GuardedResolver`, which refuses the name when any
address it resolves to is not allowed, and aiohttp connects to exactly the addresses the
resolver returned: no second lookup, so a DNS answer that changes between check and connect
(rebinding) is never used unchecked. Literal IP hosts bypass resolvers in aiohttp, so they are
checked here before the request. Redirects are not followed.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from .address_guard import AddressPolicy, literal_address


class AddressRefusedError(OSError):
    """The callback's host is, or resolves to, an address the policy refuses."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, with every answer checked against the policy."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        addresses = [literal_address(result["host"]) for result in results]
        why = self._policy.first_refusal(a for a in addresses if a is not None)
        if why is not None or None in addresses:
            raise AddressRefusedError(f"{host} resolves to {why or 'an unusable address'}")
        return results

    async def close(self) -> None:
        await self._resolver.close()


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver answered: its status and Retry-After header (if any)."""

    status: int
    retry_after: str | None


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificates checked against `ca_file`, or the system's trust store."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


class CallbackSender:
    """POSTs callbacks; one connection pool per replica. `post` raises AddressRefusedError for
    a forbidden address, aiohttp.ClientError or TimeoutError when the receiver cannot be
    reached in time."""

    def __init__(self, *, policy: AddressPolicy, ca_file: Path | None, timeout_s: float) -> None:
        self._policy = policy
        self._ssl = ssl_context(ca_file)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._policy), use_dns_cache=False, ssl=self._ssl
            )
            # trust_env=False: no proxy from the environment sees (or routes) the callbacks.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, trust_env=False
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        parsed = URL(url)
        if parsed.scheme != "https":
            raise AddressRefusedError(f"{parsed.scheme}:// is not allowed; callbacks use https")
        address = literal_address(parsed.raw_host or "")
        if address is not None and (why := self._policy.refusal(address)) is not None:
            raise AddressRefusedError(why)
        async with self._client().post(
            parsed, data=body, headers=headers, allow_redirects=False
        ) as response:
            return Answer(response.status, response.headers.get("Retry-After"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def refused(error: BaseException) -> AddressRefusedError | None:
    """The AddressRefusedError behind an aiohttp connection error, if that is what it was."""
    seen: set[int] = set()
    current: Any = error
    while current is not None and id(current) not in seen:
        if isinstance(current, AddressRefusedError):
            return current
        seen.add(id(current))
        current = getattr(current, "os_error", None) or current.__cause__
    return None
