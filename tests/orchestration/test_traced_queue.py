"""With tracing on, the work queue is wrapped in a tracing proxy; the dispatcher's `on_ready`,
set through that proxy, must still reach the queue. It once stayed on the proxy: work queued
while no credit was free never woke the dispatcher, and in the embedded mode (no poll, no
reconciler) it stayed QUEUED for ever (bench_telemetry.py hung on a batch of jobs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cpa_client import telemetry as shared
from cpa_scheduler.backends import Backends
from cpa_scheduler.dispatch import AgentProfile, AgentSession, SessionRegistry
from cpa_scheduler.dispatch.dispatcher import Dispatcher
from cpa_scheduler.domain import JobOptions, JobSource, SourceKind, TaskState
from cpa_scheduler.domain.todo import ToDo
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import Planner, TodoRequest
from cpa_scheduler.settings import Settings
from cpa_scheduler.telemetry import tracing

from .conftest import Clock

TENANT = "default"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def tracing_on() -> Iterator[None]:
    tracing.install(
        shared.tracer_provider(service_name="test", endpoint="", exporter=InMemorySpanExporter())
    )
    try:
        yield
    finally:
        tracing.uninstall()


class Agent:
    """A busy agent (no free credit) whose deliveries the test can wait for."""

    def __init__(self) -> None:
        self.delivered = asyncio.Event()
        self.session = AgentSession(
            profile=AgentProfile(
                agent_id="agent-1", tenant=TENANT, actions=frozenset({"noop"}), slots=1
            ),
            connect_time=NOW,
            last_seen_time=NOW,
            deliver=lambda message: self.delivered.set(),
            close=lambda: None,
        )


def traced_replica(
    settings: Settings, clock: Clock, backends: Backends, agent: Agent
) -> tuple[Orchestrator, Dispatcher]:
    """The orchestrator and dispatcher as server.py wires them when tracing is on."""
    queue = tracing.traced(backends.queue, "queue")
    orchestrator = Orchestrator(
        store=backends.store,
        planner=Planner.from_settings(settings),
        queue=queue,
        bus=backends.bus,
        directory=backends.directory,
        settings=settings,
        clock=clock,
    )
    registry = SessionRegistry()
    registry.add(agent.session)
    dispatcher = Dispatcher(queue=queue, sessions=registry, orchestrator=orchestrator)
    orchestrator.claim_agent = dispatcher.claim
    return orchestrator, dispatcher


async def submit(orchestrator: Orchestrator, task_id: str) -> tuple[str, TaskState]:
    plan = orchestrator.plan(TodoRequest((ToDo(id=task_id, action="noop"),)), context={})
    job, _ = await orchestrator.submit(
        tenant=TENANT,
        plan=plan,
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=4),
    )
    return job.job_id, job.tasks[task_id].state


@pytest.mark.usefixtures("tracing_on")
async def test_work_queued_through_the_traced_queue_goes_before_a_new_task(
    settings: Settings, clock: Clock, backends: Backends
) -> None:
    agent = Agent()
    orchestrator, dispatcher = traced_replica(settings, clock, backends, agent)
    await dispatcher.dispatch_round()  # learns that the queue is empty

    _, state = await submit(orchestrator, "first")  # no free credit: queued
    assert state is TaskState.QUEUED
    agent.session.credits = 1  # a result gave the credit back
    _, state = await submit(orchestrator, "second")

    # The queue announced the first task: the second may not take the credit at creation.
    assert state is TaskState.QUEUED


@pytest.mark.usefixtures("tracing_on")
async def test_work_queued_through_the_traced_queue_is_dispatched_when_a_credit_comes_back(
    settings: Settings, clock: Clock, backends: Backends
) -> None:
    agent = Agent()
    orchestrator, dispatcher = traced_replica(settings, clock, backends, agent)
    running = asyncio.create_task(dispatcher.run())
    try:
        job_id, state = await submit(orchestrator, "a")  # no free credit: queued
        assert state is TaskState.QUEUED
        agent.session.grant(1)  # a result gave the credit back, as the agent's stream does
        dispatcher.wake()
        # A bound on a failure only: the bug left the task QUEUED for ever.
        async with asyncio.timeout(10):
            await agent.delivered.wait()
        job = await orchestrator.get_job(TENANT, job_id)
        assert job.tasks["a"].state is TaskState.RUNNING
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
