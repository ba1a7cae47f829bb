"""The executor agent's lifecycle: `async_run()` for tests and embedding, `run()` for the CLI.

The stream protocol lives in connection.py; this module adds defaults, signals and a small
read-only view for probes and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from cpa_agent.connection import Connection
from cpa_agent.executors.base import SecretProvider
from cpa_agent.executors.discovery import entry_point_registry
from cpa_agent.executors.registry import ExecutorRegistry
from cpa_agent.runner import AttemptKey
from cpa_agent.secrets import secret_provider
from cpa_agent.settings import AgentSettings
from cpa_agent.telemetry import tracing
from cpa_agent.telemetry.metrics import AgentMetrics

logger = logging.getLogger(__name__)

_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long one executor's aclose() may take when the agent stops (a browser closes Chromium and
# Playwright's driver in about a second); past it the agent stops anyway.
EXECUTOR_CLOSE_TIMEOUT_S = 10.0


class Agent:
    """Connects to the scheduler and runs the ToDos it assigns until drained or cancelled."""

    def __init__(
        self,
        *,
        settings: AgentSettings | None = None,
        registry: ExecutorRegistry | None = None,
        secrets: SecretProvider | None = None,
    ) -> None:
        """Without a registry, the executors of the `cpa.executors` entry points the settings
        select (CPA_AGENT_EXECUTORS); without a secret provider, the settings' one (env:, file:,
        bare names, and CPA_AGENT_SECRET_PROVIDER's plug-in)."""
        self.settings = settings if settings is not None else AgentSettings()
        tracing.from_settings(self.settings)
        if (tls := self.settings.client_tls()) is not None:
            tls.credentials()  # unreadable files stop the start (TlsFileError), not each connect
        self.registry = (
            registry if registry is not None else entry_point_registry(self.settings.executors)
        )
        self.secrets = secrets if secrets is not None else secret_provider(self.settings)
        self._connection = Connection(
            settings=self.settings, registry=self.registry, secrets=self.secrets
        )
        self._started = False
        self.metrics_port: int | None = None

    @property
    def connected(self) -> asyncio.Event:
        """Set while a session is welcomed; `await agent.connected.wait()` to know it is up."""
        return self._connection.connected

    @property
    def sessions_started(self) -> int:
        """Sessions welcomed so far: 1 while the agent never had to reconnect."""
        return self._connection.sessions_started

    @property
    def running_attempts(self) -> frozenset[AttemptKey]:
        """Attempts running now (a snapshot)."""
        return self._connection.running_attempts

    @property
    def unacked_results(self) -> tuple[AttemptKey, ...]:
        """Attempts whose results wait in the outbox for the server's ack (a snapshot)."""
        return self._connection.unacked_results

    @property
    def draining(self) -> bool:
        return self._connection.draining

    def request_drain(self, reason: str = "drain requested") -> None:
        """Stops taking work; async_run() returns once running attempts ended and were acked."""
        self._connection.request_drain(reason)

    async def async_run(self, *, handle_signals: bool = False) -> None:
        """Runs until a drain completes; SIGTERM/SIGINT request one when handle_signals is set."""
        if self._started:
            raise RuntimeError("an Agent runs once; create a new one")
        self._started = True
        loop = asyncio.get_running_loop()
        if handle_signals:
            for signum in _DRAIN_SIGNALS:
                loop.add_signal_handler(signum, self._on_signal, signum)
        logger.info(
            "agent %s (%s) serving %s with %d slots, actions %s",
            self.settings.agent_id,
            self.settings.tenant,
            self.settings.server,
            self.settings.slots,
            ", ".join(self.registry.actions()) or "none",
        )
        metrics = self._serve_metrics()
        try:
            await self._connection.run()
        finally:
            if metrics is not None:
                metrics.close()
            tracing.flush()
            if handle_signals:
                for signum in _DRAIN_SIGNALS:
                    with contextlib.suppress(ValueError, RuntimeError):
                        loop.remove_signal_handler(signum)
            # Also when cancelled: an embedding application's event loop lives on, and so would
            # Chromium and Playwright's driver otherwise.
            await close_executors(self.registry)
        logger.info("agent %s stopped", self.settings.agent_id)

    def _serve_metrics(self) -> AgentMetrics | None:
        """The /metrics endpoint, when CPA_AGENT_METRICS_ADDRESS is set; `metrics_port` is
        then its bound port."""
        if not self.settings.metrics_address:
            return None
        connection = self._connection
        metrics = AgentMetrics(
            self.settings.slots,
            running=lambda: len(connection.running_attempts),
            connected=connection.connected.is_set,
        )
        self.metrics_port = metrics.serve(self.settings.metrics_address)
        connection.metrics = metrics
        return metrics

    def run(self) -> None:
        """CLI entry: runs until SIGTERM/SIGINT and a completed drain."""
        asyncio.run(self.async_run(handle_signals=True))

    def _on_signal(self, signum: int) -> None:
        self.request_drain(f"received {signal.Signals(signum).name}")


async def close_executors(
    registry: ExecutorRegistry, *, timeout_s: float = EXECUTOR_CLOSE_TIMEOUT_S
) -> None:
    """Calls the optional `aclose()` of every executor once, each bounded by `timeout_s`; a
    failing or slow one is logged and never keeps the agent from stopping or the others from
    closing."""
    for executor in registry.executors():
        close = getattr(executor, "aclose", None)
        if close is None:
            continue
        try:
            await asyncio.wait_for(close(), timeout_s)
        except TimeoutError:
            logger.warning("%s.aclose() took over %gs", type(executor).__name__, timeout_s)
        except Exception:
            logger.exception("%s.aclose() failed", type(executor).__name__)
