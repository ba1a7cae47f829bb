"""A caller that gives up (a client's deadline, an agent's stream ending) never splits a change
from its effects: what was committed is also queued, whenever the cancel lands."""

from __future__ import annotations

import asyncio
import contextlib

from cpa_scheduler.backends import Backends
from cpa_scheduler.dispatch import Requirement
from cpa_scheduler.domain import JobOptions, JobSource, SourceKind, ToDo
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import TodoRequest

TENANT = "acme"
STEP = ToDo(id="step", action="noop")


async def test_a_submission_cancelled_at_any_point_is_queued_if_it_was_committed(
    orchestrator: Orchestrator, backends: Backends
) -> None:
    plan = orchestrator.plan(TodoRequest([STEP]), context={})
    for steps in range(12):
        submitting = asyncio.create_task(
            orchestrator.submit(
                tenant=TENANT,
                plan=plan,
                source=JobSource(kind=SourceKind.TODOS),
                options=JobOptions(max_parallelism=1),
            )
        )
        for _ in range(steps):
            await asyncio.sleep(0)  # let it progress that many steps, then give up
        submitting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await submitting
    await orchestrator.drain_changes()

    committed = {t.job_id for t in await backends.store.queued_tasks(limit=100)}
    queued = {
        item.task.job_id for item in await backends.queue.take(Requirement.of(TENANT, STEP), 100)
    }
    assert committed == queued
    assert committed  # some cancels landed after the commit began
