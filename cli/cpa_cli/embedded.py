"""A scheduler and, optionally, an executor agent in this process: `cpa serve` and `cpa demo`.

Start order: the server binds, then the agent dials it. Stop order is the reverse: the agent drains
(finishes what it runs, gets its results acknowledged), then the server stops gracefully (health
NOT_SERVING, in-flight calls finish within the grace period, the store closes).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cpa_agent import Agent, AgentSettings
from cpa_agent.telemetry import tracing as agent_tracing
from cpa_scheduler.server import SchedulerServer
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import DataDirectoryInUseError
from cpa_scheduler.telemetry import tracing

from .common import CliError, dialable_host, split_host_port

log = logging.getLogger(__name__)

# An agent whose drain hangs past its own timeout is cancelled after this much more.
_DRAIN_MARGIN_S = 2.0


class LocalStack:
    """One SchedulerServer plus an optional in-process Agent connected to it over loopback."""

    def __init__(self, settings: Settings, *, agent: dict[str, Any] | None = None) -> None:
        """`agent` holds AgentSettings keyword arguments; None runs no agent."""
        self.settings = settings
        self.server = SchedulerServer(settings)
        self._agent_overrides = agent
        self.agent: Agent | None = None
        self.agent_task: asyncio.Task[None] | None = None
        self.address = ""
        self._hurried = False

    async def start(self, listen: str | None = None) -> str:
        """Serves on `listen` (default: settings.listen_address); returns the dialable HOST:PORT."""
        listen = listen or self.settings.listen_address
        host, _ = split_host_port(listen)
        try:
            port = await self.server.start(listen)
        except DataDirectoryInUseError as error:  # another server holds the data directory
            raise CliError(str(error)) from None
        except RuntimeError as error:  # e.g. grpc could not bind; stop() still closes the store
            raise CliError(str(error)) from None
        self.address = f"{dialable_host(host)}:{port}"
        if self._agent_overrides is not None:
            overrides: dict[str, Any] = {**self._agent_overrides, "server": self.address}
            # Authentication on: the agent in this process uses a key of this process only.
            if (credential := self.server.process_credential()) is not None:
                overrides["token"] = credential
            settings = AgentSettings(**overrides)
            if (provider := tracing.provider()) is not None:
                # One process, one trace pipeline: the local agent's attempts join it.
                agent_tracing.install(provider, sampling_ratio=tracing.sampling_ratio())
            # The executors `cpa agent` would load (cpa.executors entry points).
            self.agent = Agent(settings=settings)
            self.agent_task = asyncio.create_task(self.agent.async_run(), name="local-agent")
        return self.address

    async def agent_connected(self) -> None:
        """Returns once the local agent is welcomed; raises if its run ended before that."""
        assert self.agent is not None, "no local agent"
        assert self.agent_task is not None
        connected = asyncio.create_task(self.agent.connected.wait())
        try:
            await asyncio.wait({connected, self.agent_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        if not self.agent.connected.is_set():
            self.agent_task.result()  # raises the agent's error, if it had one
            raise RuntimeError("the local agent stopped before it connected")

    def hurry(self) -> None:
        """Stop without waiting: abandon the agents' drains and give running calls no grace.

        Attempts the agent abandons are not lost: their leases expire and they run again.
        """
        self._hurried = True
        self.server.hurry()
        if self.agent_task is not None and not self.agent_task.done():
            self.agent_task.cancel()

    async def stop(self, grace_s: float) -> None:
        """Drains the agent, then stops the server; also the way to clean up a failed start()."""
        if self.agent is not None and self.agent_task is not None:
            if not self.agent_task.done():
                self.agent.request_drain("the local scheduler is stopping")
            timeout_s = self.agent.settings.drain_timeout_s + _DRAIN_MARGIN_S
            # asyncio.wait, not await: a cancelled agent must not look like our own cancellation.
            done, _ = await asyncio.wait({self.agent_task}, timeout=timeout_s)
            if not done:
                log.warning("local agent did not drain within %.1fs; cancelling it", timeout_s)
                self.agent_task.cancel()
                await asyncio.wait({self.agent_task})
            elif not self.agent_task.cancelled() and (error := self.agent_task.exception()):
                log.error("local agent failed: %s", error, exc_info=error)
        await self.server.stop(0 if self._hurried else grace_s)
