"""A committed change's effects are carried out apart: a bus that fails to publish the events
(a wrapper of it, such as memory's RecordingBus, raising) does not keep the new task from the
work queue, which the embedded mode never repairs until a restart."""

from __future__ import annotations

from collections.abc import Sequence

from cpa_scheduler.backends import Backends
from cpa_scheduler.domain import JobEvent, JobOptions, JobSource, SourceKind, TaskState
from cpa_scheduler.domain.todo import ToDo
from cpa_scheduler.events import EventBus
from cpa_scheduler.events.fanout import Subscription, Watchers
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import Planner, TodoRequest
from cpa_scheduler.settings import Settings

from .conftest import Clock


class FailingBus:
    """The replica's bus, its publishing broken (as a wrapper that raises would leave it)."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    @property
    def watchers(self) -> Watchers:
        return self._bus.watchers

    async def publish(self, events: Sequence[JobEvent]) -> None:
        raise RuntimeError("the bus is down")

    def subscribe(self, tenant: str, job_id: str) -> Subscription:
        return self._bus.subscribe(tenant, job_id)


async def test_a_failing_bus_does_not_keep_a_new_task_from_the_queue(
    settings: Settings, clock: Clock, backends: Backends
) -> None:
    orchestrator = Orchestrator(
        store=backends.store,
        planner=Planner.from_settings(settings),
        queue=backends.queue,
        bus=FailingBus(backends.bus),
        directory=backends.directory,
        settings=settings,
        clock=clock,
    )
    plan = orchestrator.plan(TodoRequest((ToDo(id="a", action="noop"),)), context={})
    job, _ = await orchestrator.submit(
        tenant="default",
        plan=plan,
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=1),
    )
    assert job.tasks["a"].state is TaskState.QUEUED

    [requirement] = await backends.queue.requirements()
    [item] = await backends.queue.take(requirement, 10)
    assert (item.task.job_id, item.task.todo.id) == (job.job_id, "a")
