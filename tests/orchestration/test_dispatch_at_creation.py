"""A new job's task takes a free credit in its creating transaction when the queue holds no
work for it, even while credits keep coming back; queued work of its requirement goes first."""

from __future__ import annotations

from datetime import UTC, datetime

from cpa_scheduler.backends import Backends
from cpa_scheduler.dispatch import AgentProfile, AgentSession, SessionRegistry
from cpa_scheduler.dispatch.dispatcher import Dispatcher
from cpa_scheduler.domain import JobOptions, JobSource, SourceKind, TaskState
from cpa_scheduler.domain.todo import ToDo
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import TodoRequest

TENANT = "default"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def agent(slots: int) -> AgentSession:
    session = AgentSession(
        profile=AgentProfile(
            agent_id="agent-1", tenant=TENANT, actions=frozenset({"noop"}), slots=slots
        ),
        connect_time=NOW,
        last_seen_time=NOW,
        deliver=lambda message: None,
        close=lambda: None,
    )
    session.grant(slots)
    return session


def dispatcher_for(
    orchestrator: Orchestrator, backends: Backends, *sessions: AgentSession
) -> Dispatcher:
    registry = SessionRegistry()
    for session in sessions:
        registry.add(session)
    dispatcher = Dispatcher(queue=backends.queue, sessions=registry, orchestrator=orchestrator)
    orchestrator.claim_agent = dispatcher.claim
    return dispatcher


async def submit(orchestrator: Orchestrator, task_id: str) -> tuple[str, TaskState]:
    plan = orchestrator.plan(TodoRequest((ToDo(id=task_id, action="noop"),)), context={})
    job, _ = await orchestrator.submit(
        tenant=TENANT,
        plan=plan,
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=4),
    )
    return job.job_id, job.tasks[task_id].state


async def state_of(orchestrator: Orchestrator, job_id: str, task_id: str) -> TaskState:
    return (await orchestrator.get_job(TENANT, job_id)).tasks[task_id].state


async def test_a_new_task_takes_a_free_credit_while_credits_come_back(
    orchestrator: Orchestrator, backends: Backends
) -> None:
    session = agent(slots=2)
    dispatcher = dispatcher_for(orchestrator, backends, session)
    await dispatcher.dispatch_round()  # learns that the queue is empty

    dispatcher.wake()  # a result gave a credit back: a wake-up is pending
    _, state = await submit(orchestrator, "a")

    assert state is TaskState.RUNNING  # assigned as it was created
    assert session.credits == 1
    assert await backends.queue.requirements() == []


async def test_queued_work_of_the_requirement_goes_before_a_new_task(
    orchestrator: Orchestrator, backends: Backends
) -> None:
    session = agent(slots=1)
    session.credits = 0  # busy
    dispatcher = dispatcher_for(orchestrator, backends, session)
    first, state = await submit(orchestrator, "first")
    assert state is TaskState.QUEUED
    await dispatcher.dispatch_round()  # no credit: the work stays queued

    session.credits = 1  # the busy slot is free again
    second, state = await submit(orchestrator, "second")
    assert state is TaskState.QUEUED  # not ahead of the first

    await dispatcher.dispatch_round()
    await dispatcher.assignments_done(timeout_s=5)
    assert await state_of(orchestrator, first, "first") is TaskState.RUNNING
    assert await state_of(orchestrator, second, "second") is TaskState.QUEUED


async def test_announced_work_goes_first_until_a_round_looked(
    orchestrator: Orchestrator, backends: Backends
) -> None:
    session = agent(slots=2)
    dispatcher = dispatcher_for(orchestrator, backends, session)
    await dispatcher.dispatch_round()

    dispatcher.work_ready()  # e.g. another replica queued work
    _, state = await submit(orchestrator, "a")
    assert state is TaskState.QUEUED

    await dispatcher.dispatch_round()
    await dispatcher.assignments_done(timeout_s=5)
    _, state = await submit(orchestrator, "b")
    assert state is TaskState.RUNNING  # the round found the queue empty again


async def test_a_task_is_never_assigned_to_an_agent_of_another_tenant(
    orchestrator: Orchestrator, backends: Backends
) -> None:
    job_id, state = await submit(orchestrator, "a")  # no agent: queued
    assert state is TaskState.QUEUED
    [requirement] = await backends.queue.requirements()
    [item] = await backends.queue.take(requirement, 1)

    assert await orchestrator.assign(item.task, "agent-1", agent_tenant="another") is None
    assert await state_of(orchestrator, job_id, "a") is TaskState.QUEUED
    assigned = await orchestrator.assign(item.task, "agent-1", agent_tenant=TENANT)
    assert assigned is not None
    assert await state_of(orchestrator, job_id, "a") is TaskState.RUNNING
