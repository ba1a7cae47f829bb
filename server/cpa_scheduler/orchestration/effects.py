"""The effects of a committed job change, carried out after the commit: its events to the bus,
its ready tasks to the work queue (withdrawn ones out of it), cancels and session ends to the
agents (through the replica that holds each)."""

from __future__ import annotations

import logging

from cpa_scheduler.dispatch.directory import AgentDirectory
from cpa_scheduler.dispatch.sessions import CancelMessage, SessionEndMessage
from cpa_scheduler.domain import Job, JobChanges
from cpa_scheduler.events import EventBus
from cpa_scheduler.queue import WorkQueue
from cpa_scheduler.storage import QueuedTask

log = logging.getLogger(__name__)


async def carry_out(
    job: Job, changes: JobChanges, *, bus: EventBus, queue: WorkQueue, directory: AgentDirectory
) -> None:
    """The effects of a committed change. They never fail the change's caller: it is
    stored, and a caller told otherwise would retry it. What a failure leaves undone is
    repaired without them: queued tasks are published again by the reconciler (the
    distributed mode; in process, publishing cannot fail), a lost cancel ends with the
    attempt's lease, and watchers re-read events they missed from the store. The events and
    the queue are apart: a failing bus (or a wrapper of it) must not keep the tasks from the
    queue, which the embedded mode never repairs until a restart."""
    try:
        await bus.publish(changes.events)
    except Exception as error:
        _failed(job, "publishing its events", error)
    try:
        if changes.queued:
            await queue.publish([queue_entry(job, task_id) for task_id in changes.queued])
        if changes.withdrawn:
            # Else a requirement no agent serves would keep its entries for ever.
            pins = changes.withdrawn_pins
            await queue.withdraw(
                [queue_entry(job, task_id, pins.get(task_id, "")) for task_id in changes.withdrawn]
            )
        for ref, agent_id in changes.cancels:
            # If no replica holds the agent, its lease expires and the task ends CANCELLED.
            await directory.route_cancel(
                job.tenant, agent_id, CancelMessage(attempt=ref, reason=job.stop_message())
            )
        for end in changes.sessions_ended:
            # At most once: an agent away now closes the session when it learns that its
            # attempts of it are no longer current (see SessionEnded in the contract).
            await directory.route_cancel(
                job.tenant,
                end.agent_id,
                SessionEndMessage(job_id=job.job_id, session=end.session, reason=end.reason),
            )
    except Exception as error:
        _failed(job, "carrying out its change", error)


def _failed(job: Job, step: str, error: Exception) -> None:
    log.warning("job %s is stored, but %s failed (repaired later): %s", job.job_id, step, error)


def queue_entry(job: Job, task_id: str, pin: str | None = None) -> QueuedTask:
    """The work queue's reference to the task as it waits (or waited) QUEUED; a task of a
    session carries the agent its session is bound to (`pin`: the one it waited for)."""
    task = job.tasks[task_id]
    return QueuedTask(
        tenant=job.tenant,
        job_id=job.job_id,
        todo=task.todo,
        attempt=task.attempt,
        not_before=task.next_attempt_time,
        agent_id=(task.agent_id if task.todo.session else "") if pin is None else pin,
        trace_context=job.options.trace_context,
    )
