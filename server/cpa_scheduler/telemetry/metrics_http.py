"""The /metrics endpoint: prometheus_client's HTTP server in a thread, for one registry.

A thread, not the event loop: a scrape never waits behind the loop's work, and its cost (the
text of a few hundred series) is paid off the hot path. The agent, which does not depend on the
scheduler's package, calls prometheus_client's server itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


def split_address(address: str) -> tuple[str, int]:
    """'host:port' (IPv6 in brackets) as (host, port); ValueError naming the address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class MetricsEndpoint:
    """A running /metrics server; `port` is the bound one (the address may say 0)."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(address: str, registry: CollectorRegistry) -> MetricsEndpoint:
    """Serve `registry` on http://address/metrics (any path answers, as prometheus_client's)."""
    host, port = split_address(address)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(server, thread)
