"""Recording finished jobs in semantic memory, off the hot path.

`RecordingBus` wraps the replica's event bus: after the orchestrator publishes (its commit
done), terminal events of jobs are handed to `JobRecorder`, whose bounded queue a background
task drains: it reads the job, embeds its request text and puts the record. The orchestrator
publishes only on the replica that made the change, so each ending is recorded once. Nothing here
can fail or slow a job: a full queue drops the record (logged), a failing put is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from cpa_scheduler.domain import JobEvent
from cpa_scheduler.domain.job import Job
from cpa_scheduler.domain.states import JobState
from cpa_scheduler.events.bus import EventBus
from cpa_scheduler.events.fanout import Subscription, Watchers
from cpa_scheduler.storage.codec import todo_to_data
from cpa_scheduler.storage.interface import Store

from .interface import ConversationEntry, ConversationMemory, MemoryRecord, SemanticMemory

log = logging.getLogger(__name__)

# Endings worth remembering: a cancelled job says nothing about whether its plan works.
_OUTCOMES = {JobState.SUCCEEDED: "succeeded", JobState.FAILED: "failed"}


def job_record(job: Job) -> MemoryRecord | None:
    """The memory of a finished job, or None for one without request text or not finished."""
    outcome = _OUTCOMES.get(job.state)
    if outcome is None or not job.source.text.strip():
        return None
    failure = ""
    if job.error is not None:
        failure = f"{job.error.code}: {job.error.message}" if job.error.message else job.error.code
    return MemoryRecord(
        # One record per job: ending again after a RetryJob replaces it.
        memory_id=f"job:{job.job_id}",
        tenant=job.tenant,
        text=job.source.text,
        plan=tuple(dict(todo_to_data(task.todo)) for task in job.tasks.values()),
        outcome="succeeded" if outcome == "succeeded" else "failed",
        failure_reason=failure,
        job_id=job.job_id,
        created_unix_s=(job.end_time or job.update_time).timestamp(),
    )


def result_entry(job: Job) -> ConversationEntry:
    """A finished job as an entry of its conversation."""
    error = job.error.code if job.error is not None else ""
    return ConversationEntry(
        role="result",
        text=f"job {job.job_id} {job.state.value}" + (f": {error}" if error else ""),
        data={"job_id": job.job_id, "state": job.state.value, "error": error},
    )


class JobRecorder:
    """Puts finished jobs into `memory`; `offer` never blocks, `run` drains until cancelled."""

    def __init__(
        self,
        *,
        store: Store,
        memory: SemanticMemory,
        conversations: ConversationMemory | None = None,
        max_queued: int = 1000,
    ) -> None:
        self._store = store
        self._memory = memory
        self._conversations = conversations
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=max_queued)
        self.recorded = 0
        self.dropped = 0

    def offer(self, events: Sequence[JobEvent]) -> None:
        for event in events:
            if not event.terminal:
                continue
            try:
                self._queue.put_nowait((event.tenant, event.job_id))
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("memory recorder queue full; job %s not remembered", event.job_id)

    async def run(self) -> None:
        while True:
            tenant, job_id = await self._queue.get()
            try:
                await self.record(tenant, job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("remembering job %s failed", job_id)
            finally:
                self._queue.task_done()

    async def drained(self) -> None:
        """Until every ending offered so far has been recorded (or failed to be)."""
        await self._queue.join()

    async def record(self, tenant: str, job_id: str) -> None:
        job = await self._store.get_job(tenant, job_id)
        record = job_record(job)
        if record is not None:
            await self._memory.put(record)
            self.recorded += 1
        if job.conversation_id and self._conversations is not None:
            # The result joins its conversation's short-term memory (any ending, cancels too);
            # after the put, so a short-term store that is down costs only this entry.
            await self._conversations.append(tenant, job.conversation_id, result_entry(job))


class RecordingBus:
    """`bus`, with every published batch also offered to `recorder` (after the bus has it)."""

    def __init__(self, bus: EventBus, recorder: JobRecorder) -> None:
        self._bus = bus
        self._recorder = recorder

    @property
    def inner(self) -> EventBus:
        return self._bus

    @property
    def watchers(self) -> Watchers:
        return self._bus.watchers

    async def publish(self, events: Sequence[JobEvent]) -> None:
        try:
            await self._bus.publish(events)
        finally:
            self._recorder.offer(events)

    def subscribe(self, tenant: str, job_id: str) -> Subscription:
        return self._bus.subscribe(tenant, job_id)
