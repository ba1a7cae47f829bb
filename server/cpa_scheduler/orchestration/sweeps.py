"""The time-driven transitions of the orchestrator: leases, timeouts, deadlines, request-id
and event retention, and re-publishing what waits QUEUED (reconcile at intervals, recover at start).

A part of Orchestrator (its base class), apart because it is a concern of its own: each sweep
asks the store what is due and applies the domain's transition through Orchestrator._apply.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from cpa_scheduler.dispatch.directory import AgentDirectory
from cpa_scheduler.dispatch.matching import AgentProfile, Requirement, unmet_requirement
from cpa_scheduler.domain import AttemptRef, AuditEntry, Job, NotFound, StaleAttempt
from cpa_scheduler.queue import WorkQueue
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import EndPosition, QueuedTask, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

# Most expired leases handled in one sweep; the next sweep takes the rest.
SWEEP_BATCH = 500
# Most finished jobs whose events one sweep prunes: the embedded store deletes on the loop.
PRUNE_BATCH = 100
# Most audit entries one sweep deletes.
AUDIT_PRUNE_BATCH = 1000


class TimeSweeps:
    """The sweeps; what they use is the Orchestrator's."""

    _store: Store
    _queue: WorkQueue
    _directory: AgentDirectory
    _settings: Settings
    _clock: Callable[[], datetime]
    _rng: random.Random
    _request_retention: timedelta
    _event_retention: timedelta
    _audit_retention: timedelta | None
    _prune_after: EndPosition | None
    _absent_since: dict[tuple[str, str], datetime]

    async def _apply(
        self,
        tenant: str,
        job_id: str,
        mutate: Callable[[Job], T],
        *,
        caller_may_leave: bool = False,
        audit: AuditEntry | None = None,
    ) -> tuple[Job, T]:
        raise NotImplementedError  # Orchestrator._apply

    async def expire_leases(self) -> int:
        """End the attempts whose lease ended: TIMED_OUT past their timeout, else LOST
        (re-queued within the redelivery bound)."""
        now = self._clock()
        expired = await self._store.expired_attempts(now, limit=SWEEP_BATCH)
        for tenant, ref in expired:

            def end(job: Job, ref: AttemptRef = ref) -> None:
                job.lease_expired(
                    ref.task_id,
                    attempt=ref.attempt,
                    max_redeliveries=self._settings.max_redeliveries,
                    now=now,
                    rng=self._rng,
                )

            try:
                await self._apply(tenant, ref.job_id, end)
            except (StaleAttempt, NotFound):
                continue  # it ended (or was renewed) since the query
            log.warning("lease of %s/%s attempt %d expired", ref.job_id, ref.task_id, ref.attempt)
        return len(expired)

    async def expire_unstarted_tasks(self) -> int:
        """Fail the QUEUED tasks no agent took within their schedule-to-start timeout, saying
        what the connected agents lack."""
        now = self._clock()
        unstarted = await self._store.unstarted_tasks(now, limit=SWEEP_BATCH)
        # Per tenant, the agents offering each action: a task's reason looks at those only,
        # not at every agent of the tenant (thousands of agents, hundreds of tasks a sweep).
        agents: dict[str, dict[str, list[AgentProfile]]] = {}
        for tenant, job_id, task_id in unstarted:
            if tenant not in agents:
                by_action: dict[str, list[AgentProfile]] = {}
                for record in await self._directory.list_agents(tenant):
                    for action in record.profile.actions:
                        by_action.setdefault(action, []).append(record.profile)
                agents[tenant] = by_action
            offering = agents[tenant]

            def miss(
                job: Job, task_id: str = task_id, offering: dict[str, list[AgentProfile]] = offering
            ) -> bool:
                task = job.task(task_id)
                pin = task.agent_id if task.todo.session else ""
                requirement = Requirement.of(job.tenant, task.todo, pin)
                profiles = offering.get(requirement.action, [])
                why = unmet_requirement(requirement, profiles) or "every capable agent was busy"
                return job.miss_start(task_id, now=now, why=why)

            try:
                _, missed = await self._apply(tenant, job_id, miss)
            except NotFound:
                continue
            if missed:
                log.warning("task %s/%s was not started in time", job_id, task_id)
        return len(unstarted)

    async def release_absent_sessions(self) -> int:
        """Restart the sessions whose next task waits QUEUED for an agent that no replica has
        held for `lease_duration_s` (it left between two tasks of the session, so no lease of
        it expires): their tasks run again from the first one on another agent
        (Job.release_session). Returns how many sessions restarted.

        When the agent went away is known per replica (since this replica first saw it away);
        any replica may release the task, once: it takes the queue entry (fenced in the store).
        """
        now = self._clock()
        lease = timedelta(seconds=self._settings.lease_duration_s)
        absent: dict[tuple[str, str], datetime] = {}
        released = 0
        for requirement in await self._queue.requirements():
            if not requirement.agent_id:
                continue
            key = (requirement.tenant, requirement.agent_id)
            if key not in absent:
                if await self._directory.is_connected(*key):
                    continue
                absent[key] = self._absent_since.get(key, now)
            if now - absent[key] < lease:
                continue
            done = []
            for item in await self._queue.take(requirement, SWEEP_BATCH):

                def release(job: Job, task: QueuedTask = item.task) -> bool:
                    return job.release_session(
                        task.todo.id,
                        attempt=task.attempt,
                        agent_id=task.agent_id,
                        max_redeliveries=self._settings.max_redeliveries,
                        now=now,
                    )

                try:
                    _, restarted = await self._apply(requirement.tenant, item.task.job_id, release)
                except NotFound:
                    restarted = False
                done.append(item)
                if restarted:
                    released += 1
                    log.warning(
                        "agent %s is gone: session %r of job %s restarts",
                        requirement.agent_id,
                        item.task.todo.session,
                        item.task.job_id,
                    )
            await self._queue.ack(done)
        self._absent_since = absent
        return released

    async def forget_request_ids(self) -> int:
        """Release the request ids whose retention window ended."""
        return await self._store.forget_request_ids(
            self._clock() - self._request_retention, limit=SWEEP_BATCH
        )

    async def prune_events(self) -> int:
        """Delete the events of jobs that ended more than `event_retention_s` ago, all but each
        job's last (terminal) one; a few jobs per sweep, walking them in order of their end."""
        deleted, self._prune_after = await self._store.prune_events(
            self._clock() - self._event_retention, after=self._prune_after, limit=PRUNE_BATCH
        )
        return deleted

    async def prune_audit(self) -> int:
        """Delete the audit entries older than `audit_retention_days` (none when 0), the oldest
        first, a batch per sweep: the only deletion of audit entries."""
        if self._audit_retention is None:
            return 0
        return await self._store.prune_audit(
            self._clock() - self._audit_retention, limit=AUDIT_PRUNE_BATCH
        )

    async def expire_overdue_jobs(self) -> int:
        """Stop the jobs whose deadline passed: they end FAILED with JOB_DEADLINE_EXCEEDED once
        their running attempts have stopped (or lost their lease)."""
        now = self._clock()
        overdue = await self._store.overdue_jobs(now, limit=SWEEP_BATCH)
        for tenant, job_id in overdue:
            try:
                _, expired = await self._apply(tenant, job_id, lambda j: j.expire(now=now))
            except NotFound:
                continue
            if expired:
                log.info("job %s passed its deadline", job_id)
        return len(overdue)

    async def sweep_forever(self, *, interval_s: float) -> None:
        """Leases, timeouts, deadlines and retention: the time-driven transitions."""
        sweeps = (
            self.expire_leases,
            self.expire_unstarted_tasks,
            self.expire_overdue_jobs,
            self.release_absent_sessions,
            self.forget_request_ids,
            self.prune_events,
            self.prune_audit,
        )
        while True:
            await asyncio.sleep(interval_s)
            for sweep in sweeps:
                try:
                    await sweep()
                except Exception:  # a failing sweep must not stop the next one
                    log.exception("%s failed", sweep.__name__)

    async def reconcile(self, *, older_than_s: float) -> int:
        """Publish again the tasks QUEUED for longer than `older_than_s`: a crash between commit
        and publish, or a wiped Redis, must not strand them. Duplicates are harmless (fenced)."""
        before = self._clock() - timedelta(seconds=older_than_s)
        stranded = await self._store.queued_tasks(limit=SWEEP_BATCH, queued_before=before)
        await self._queue.publish(stranded)
        return len(stranded)

    async def reconcile_forever(self, *, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reconcile(older_than_s=interval_s)
            except Exception:  # a failing round must not stop the next one
                log.exception("reconciliation failed")

    async def recover(self) -> int:
        """Queue again every task the store holds as QUEUED (start-up after a stop or crash)."""
        queued = await self._store.queued_tasks(limit=1_000_000)
        await self._queue.publish(queued)
        return len(queued)
