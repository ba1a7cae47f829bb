"""Prometheus metrics of one agent, served on CPA_AGENT_METRICS_ADDRESS (/metrics).

Each Agent has its own registry (tests run several in one process). Attempts are counted where
they end (`attempt_ended`); slots and running attempts are read when Prometheus scrapes.
Labels are bounded: actions are this agent's executors (a fixed set), outcomes three words.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cpa.executor.v1 import executor_service_pb2

_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


def split_address(address: str) -> tuple[str, int]:
    """'host:port' as (host, port), an empty host meaning all interfaces; else ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address {address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Slots(Collector):
    def __init__(self, slots: int, running: Callable[[], int], connected: Callable[[], bool]):
        self._slots, self._running, self._connected = slots, running, connected

    def collect(self) -> Iterable[GaugeMetricFamily]:
        running = self._running()
        yield GaugeMetricFamily("agent_slots", "Attempts this agent runs at once.", self._slots)
        yield GaugeMetricFamily("agent_running_attempts", "Attempts running now.", running)
        yield GaugeMetricFamily(
            "agent_up", "1 while a session with the scheduler is welcomed.", self._connected()
        )


class AgentMetrics:
    """The agent's metrics; `serve(address)` starts its /metrics endpoint."""

    def __init__(self, slots: int, running: Callable[[], int], connected: Callable[[], bool]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.attempts = Counter(
            "agent_attempts",
            "Attempts this agent ran, by action and outcome (succeeded, failed, cancelled).",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "agent_attempt_duration_seconds",
            "Time of an attempt on this agent, by action.",
            ["action"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Slots(slots, running, connected))
        self._server: WSGIServer | None = None

    def attempt_ended(
        self, action: str, duration_s: float, result: executor_service_pb2.Result
    ) -> None:
        if result.cancelled:
            outcome = "cancelled"
        else:
            outcome = "failed" if result.WhichOneof("outcome") == "error" else "succeeded"
        self.attempts.labels(action, outcome).inc()
        self.duration.labels(action).observe(duration_s)

    def serve(self, address: str) -> int:
        """Serve /metrics on `address` (host:port; port 0: any free one); the bound port."""
        host, port = split_address(address)
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
