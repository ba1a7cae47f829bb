"""Task sessions on PostgreSQL + Redis: scheduler replicas as processes, the session's agents
connected to different replicas, the job submitted and watched on another. The same scenarios
as the embedded suite (tests/e2e/test_task_sessions.py): the binding travels as the requirement
of the Redis stream, the restart and the SessionEnded cross replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from cpa_agent import Agent, ExecutorRegistry
from cpa_client import SchedulerClient
from tests.e2e.conftest import Agents
from tests.e2e.session_probe import (
    Recorder,
    affinity_and_end,
    cancel_closes,
    restart_on_loss,
    restart_when_gone_between_steps,
)
from tests.fixtures.cluster import Cluster

TIMEOUT_S = 60.0

Scenario = Callable[[SchedulerClient, Agents, Recorder], Awaitable[None]]


@dataclass
class SpreadAgents(Agents):
    """In-process agents (they run the probe executor), each on the next replica in turn."""

    targets: list[str] = field(default_factory=list)

    async def start(
        self, agent_id: str, *, registry: ExecutorRegistry | None = None, **settings: Any
    ) -> Agent:
        self.target = self.targets[len(self.running) % len(self.targets)]
        return await super().start(agent_id, registry=registry, **settings)


@pytest.fixture
async def spread(cluster: Cluster) -> AsyncIterator[tuple[SchedulerClient, SpreadAgents]]:
    replicas = [cluster.replica(name) for name in ("r1", "r2", "r3")]
    pool = SpreadAgents(target="", targets=[replicas[0].target, replicas[1].target])
    async with SchedulerClient(replicas[2].target, timeout_s=TIMEOUT_S) as client:
        try:
            yield client, pool
        finally:
            await pool.stop_all()


@pytest.mark.parametrize(
    "scenario",
    [affinity_and_end, restart_on_loss, restart_when_gone_between_steps, cancel_closes],
    ids=["affinity-and-end", "restart-on-loss", "restart-when-gone", "cancel-closes"],
)
async def test_task_sessions_across_replicas(
    spread: tuple[SchedulerClient, SpreadAgents], scenario: Scenario
) -> None:
    client, agents = spread
    await scenario(client, agents, Recorder())
