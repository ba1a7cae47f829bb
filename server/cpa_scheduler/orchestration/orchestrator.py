"""Orchestrator: every change to a job goes through here, as one fenced store transaction,
followed (after commit) by its effects: ready tasks queued, events published, cancels sent.

One piece of code for both modes; only the store, queue and bus behind it differ.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cpa_scheduler.dispatch.directory import AgentDirectory
from cpa_scheduler.dispatch.sessions import (
    AgentSession,
    AssignmentMessage,
)
from cpa_scheduler.domain import (
    ArtifactRecord,
    AttemptRef,
    AuditCall,
    AuditEntry,
    DomainError,
    InvalidArgument,
    Job,
    JobChanges,
    JobEvent,
    JobFilter,
    JobOptions,
    JobSource,
    NotFound,
    OutboundCallback,
    PagePosition,
    Reason,
    StaleAttempt,
    ToDo,
    UnresolvedInput,
)
from cpa_scheduler.events import EventBus
from cpa_scheduler.planning import Plan, Planner, PlanRequest
from cpa_scheduler.policy import Policies, check_task
from cpa_scheduler.policy.enforce import check_redrive
from cpa_scheduler.queue import WorkQueue
from cpa_scheduler.security.quotas import Quotas
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import EndPosition, QueuedTask, Store
from cpa_scheduler.telemetry import metrics, tracing
from cpa_scheduler.telemetry.logs import job_context

from .admission import Admission
from .effects import carry_out
from .reports import AgentReports
from .sweeps import TimeSweeps

log = logging.getLogger(__name__)

# Why RetryJobs passes over a job (and goes on with the others).
_SKIPPED_ON_REDRIVE = frozenset(
    {Reason.ILLEGAL_TRANSITION, Reason.JOB_NOT_FOUND, Reason.POLICY_VIOLATION}
)

T = TypeVar("T")
R = TypeVar("R")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Submission:
    """One job to create: a matched plan and what came with it."""

    plan: Plan
    source: JobSource
    options: JobOptions
    request_id: str = ""
    request_fingerprint: str = ""
    conversation_id: str = ""


class Orchestrator(Admission, AgentReports, TimeSweeps):
    """Job lifecycle: submit, assign, results, leases, cancel, retry; the time-driven
    transitions come from TimeSweeps."""

    def __init__(
        self,
        *,
        store: Store,
        planner: Planner,
        queue: WorkQueue,
        bus: EventBus,
        directory: AgentDirectory,
        settings: Settings,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
        # (job, its change's events) -> its callback messages (callbacks/messages.py)
        callback_messages: Callable[[Job, list[JobEvent]], list[OutboundCallback]] | None = None,
        quotas: Quotas | None = None,
        policies: Policies | None = None,
    ) -> None:
        self._store = store
        self._callback_messages = callback_messages
        self.callbacks_made: Callable[[], None] = lambda: None  # wakes the deliverer (server)
        self._quotas = quotas
        # Tenant policies (docs/POLICY.md): a tenant without one costs a dict lookup per task.
        self.policies = policies or Policies()
        self._planner = planner
        self._queue = queue
        self._bus = bus
        self._directory = directory
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._lease = timedelta(seconds=settings.lease_duration_s)
        # Takes a free credit of a local agent for a new task, or None (set by the dispatcher).
        self.claim_agent: Callable[[str, ToDo], AgentSession | None] = lambda tenant, todo: None
        # Changes whose callers may have given up (see _uncancellable): held until they end.
        self._changing: set[asyncio.Task[Any]] = set()
        self._timeout_grace = timedelta(seconds=settings.task_timeout_grace_s)
        self._request_retention = timedelta(seconds=settings.idempotency_retention_s)
        self._event_retention = timedelta(seconds=settings.event_retention_s)
        self._audit_retention = (
            timedelta(days=settings.audit_retention_days) if settings.audit_retention_days else None
        )
        # Where the event retention sweep goes on (per process: after a restart it walks the
        # finished jobs once more from the start, deleting nothing twice).
        self._prune_after: EndPosition | None = None
        # Agents holding sessions whose next task waits for them, and since when this replica
        # has seen them away (see release_absent_sessions).
        self._absent_since: dict[tuple[str, str], datetime] = {}

    @property
    def store(self) -> Store:
        return self._store

    # -- callers' requests (planning and its checks: Admission) ----------------------------

    async def schedule(
        self,
        *,
        tenant: str,
        request: PlanRequest,
        source: JobSource,
        options: JobOptions,
        request_id: str = "",
        request_fingerprint: str = "",
        conversation_id: str = "",
        credential_refs: Mapping[str, str] | None = None,
        audit: AuditCall | None = None,
        deadline: float | None = None,
    ) -> tuple[Job, bool]:
        """Plan and submit one request; `credential_refs` (a LAM request's
        Security.credential_refs) go to every ToDo that does not name the purpose itself.
        `audit`: the call whose entry is written with the new job; `deadline`
        (time.monotonic()): the call's, for planning text with a model."""
        return await self.submit(
            tenant=tenant,
            plan=await self.matched_plan(
                request,
                context=options.context,
                credential_refs=credential_refs,
                tenant=tenant,
                callback_url=options.callback_url,
                conversation_id=conversation_id,
                deadline=deadline,
            ),
            source=source,
            options=options,
            request_id=request_id,
            request_fingerprint=request_fingerprint,
            conversation_id=conversation_id,
            audit=audit,
        )

    async def submit(
        self,
        *,
        tenant: str,
        plan: Plan,
        source: JobSource,
        options: JobOptions,
        request_id: str = "",
        request_fingerprint: str = "",
        conversation_id: str = "",
        audit: AuditCall | None = None,
    ) -> tuple[Job, bool]:
        """Create a job for a matched plan; idempotent by request_id. Returns (job, created)."""
        submission = Submission(
            plan=plan,
            source=source,
            options=options,
            request_id=request_id,
            request_fingerprint=request_fingerprint,
            conversation_id=conversation_id,
        )
        return (await self.submit_all(tenant, [submission], audit=audit))[0]

    async def submit_all(
        self,
        tenant: str,
        submissions: Sequence[Submission],
        *,
        audit: AuditCall | None = None,
    ) -> list[tuple[Job, bool]]:
        """Create a job for each submission, all in one transaction or none (a request id
        reused for a different request: RequestIdReused, whose index names the submission).
        Returns (job, created) per submission, in order; created is False for a request id's
        earlier job. The request ids must differ from each other. With `audit`, each new job
        comes with an entry of the call (its intent as the reason); a request id's earlier job
        gets none (nothing changed)."""
        now = self._clock()
        jobs = []
        # Empty (nothing kept) when tracing is off or the call is not sampled.
        trace_context = tracing.current_carrier()
        for submission in submissions:
            if submission.plan.graph is None:
                raise ValueError("an unmatched plan cannot become a job")
            jobs.append(
                Job.create(
                    job_id=uuid.uuid4().hex,
                    tenant=tenant,
                    graph=submission.plan.graph,
                    source=submission.source,
                    options=replace(submission.options, trace_context=trace_context)
                    if trace_context
                    else submission.options,
                    now=now,
                    intent=submission.plan.intent,
                    request_id=submission.request_id,
                    request_fingerprint=submission.request_fingerprint,
                    conversation_id=submission.conversation_id,
                )
            )
        reservation = await self._quotas.reserve(tenant, jobs) if self._quotas else None
        placed = [self._place_at_once(job, now) for job in jobs]
        for job in jobs:
            self._note_callbacks(job)
            if audit is not None:
                job.changes.audit.append(
                    audit.entry(create_time=now, job_id=job.job_id, reason=job.intent)
                )

        def release(sessions: Sequence[tuple[str, AgentSession]]) -> None:
            for _, session in sessions:
                session.grant(1)

        async def create() -> list[tuple[Job, bool]]:
            try:
                with metrics.store_transaction("create_jobs"):
                    outcomes = await self._store.create_jobs(jobs)
            except BaseException:
                for sessions in placed:
                    release(sessions)
                if reservation is not None:
                    reservation.settle(())
                raise
            if reservation is not None:
                reservation.settle(j.job_id for j, changes in outcomes if changes is not None)
            # Together: the queue and bus calls of many jobs then share their round trips.
            await asyncio.gather(
                *(self._after_commit(j, changes) for j, changes in outcomes if changes is not None)
            )
            for (stored, changes), sessions in zip(outcomes, placed, strict=True):
                if changes is None:  # the request id's earlier job: nothing of this one is stored
                    release(sessions)
                    continue
                if log.isEnabledFor(logging.DEBUG):
                    with job_context(
                        stored.tenant, stored.job_id, trace_context=stored.options.trace_context
                    ):
                        log.debug("job %s created (%d tasks)", stored.job_id, len(stored.tasks))
                for task_id, session in sessions:
                    message = self._assignment(stored, task_id, inputs={})
                    session.hold(AttemptRef(stored.job_id, task_id, message.attempt))
                    session.deliver(message)
            return [(stored, changes is not None) for stored, changes in outcomes]

        return await self._uncancellable(create())

    def _place_at_once(self, job: Job, now: datetime) -> list[tuple[str, AgentSession]]:
        """Assign the new job's ready tasks, in the creating transaction, to local agents with a
        free credit while no queued work waits for them (`claim_agent`, the dispatcher's): one
        transaction and no queue round trip per task instead of three. The rest is queued."""
        placed = []
        for task_id in list(job.changes.queued):
            todo = job.tasks[task_id].todo
            if todo.inputs or (session := self.claim_agent(job.tenant, todo)) is None:
                continue
            if session.profile.tenant != job.tenant:  # as in assign(): never another tenant's
                session.grant(1)
                continue
            job.assign(
                task_id,
                attempt=1,
                agent_id=session.agent_id,
                lease_until=now + self._lease,
                now=now,
                timeout_at=self._timeout_at(todo, now),
            )
            placed.append((task_id, session))
        return placed

    async def get_job(self, tenant: str, job_id: str) -> Job:
        return await self._store.get_job(tenant, job_id)

    async def list_jobs(
        self, tenant: str, job_filter: JobFilter, *, after: PagePosition | None, limit: int
    ) -> list[Job]:
        return await self._store.list_jobs(tenant, job_filter, after=after, limit=limit)

    async def list_events(
        self, tenant: str, job_id: str, *, after_sequence: int, limit: int
    ) -> list[JobEvent]:
        return await self._store.list_events(
            tenant, job_id, after_sequence=after_sequence, limit=limit
        )

    async def cancel(
        self, tenant: str, job_id: str, *, reason: str = "", audit: AuditCall | None = None
    ) -> Job:
        """Cancel the job, with the caller's reason (InvalidArgument PAYLOAD_TOO_LARGE, field
        `reason`, beyond max_cancel_reason_bytes: refused rather than cut, so what is recorded
        and sent to the agents is what the caller wrote)."""
        size = len(reason.encode())
        if size > self._settings.max_cancel_reason_bytes:
            raise InvalidArgument(
                f"reason is {size} bytes; the limit is {self._settings.max_cancel_reason_bytes}",
                reason=Reason.PAYLOAD_TOO_LARGE,
                field="reason",
            )
        now = self._clock()
        job, _ = await self._apply(
            tenant,
            job_id,
            lambda j: j.cancel(now=now, reason=reason),
            caller_may_leave=True,
            audit=audit.entry(create_time=now, job_id=job_id, reason=reason) if audit else None,
        )
        return job

    async def retry(self, tenant: str, job_id: str, *, audit: AuditCall | None = None) -> Job:
        """Re-drive a FAILED or CANCELLED job; PolicyViolation when the tenant's policy in
        force now refuses a task that would run again (or the job's callback URL)."""
        reservation = await self._quotas.reserve_retry(tenant, job_id) if self._quotas else None
        now = self._clock()
        policy = self.policies.get(tenant)

        def redrive(job: Job) -> None:
            if policy is not None:
                check_redrive(policy, job)
            job.retry(now=now)

        try:
            job, _ = await self._apply(
                tenant,
                job_id,
                redrive,
                caller_may_leave=True,
                audit=audit.entry(create_time=now, job_id=job_id) if audit else None,
            )
        except BaseException:
            if reservation is not None:
                reservation.settle(())
            raise
        return job

    async def retry_jobs(
        self,
        tenant: str,
        job_filter: JobFilter,
        *,
        limit: int,
        batch: int = 100,
        audit: AuditCall | None = None,
    ) -> tuple[list[Job], list[tuple[str, DomainError]]]:
        """Re-drive, each as `retry` does, the first `limit` jobs matching `job_filter` (newest
        first, listed `batch` at a time). Returns the re-driven jobs, and the ids of those that
        could not be re-driven (not FAILED or CANCELLED, e.g. changed since listed, or gone)
        with the error; any other error ends the call, and what was re-driven stays so.

        A re-driven job no longer matches a filter of FAILED or CANCELLED jobs, so calling again
        passes over it unless it failed again. Pages continue after the last job listed, so a
        job that fails again during the call is not re-driven twice by it.
        """
        retried: list[Job] = []
        skipped: list[tuple[str, DomainError]] = []
        after: PagePosition | None = None
        while (remaining := limit - len(retried) - len(skipped)) > 0:
            size = min(remaining, batch)
            page = await self._store.list_jobs(tenant, job_filter, after=after, limit=size)
            for listed in page:
                try:
                    retried.append(await self.retry(tenant, listed.job_id, audit=audit))
                except DomainError as error:
                    if error.reason not in _SKIPPED_ON_REDRIVE:
                        raise
                    skipped.append((listed.job_id, error))
            if len(page) < size:
                break
            after = PagePosition(create_time=page[-1].create_time, job_id=page[-1].job_id)
        return retried, skipped

    # -- agents' side -----------------------------------------------------------------------

    async def assign(
        self, item: QueuedTask, agent_id: str, *, agent_tenant: str
    ) -> AssignmentMessage | None:
        """Start the next attempt of a queued task on `agent_id` (of `agent_tenant`), its inputs
        resolved; None when the item is stale, or when the task failed instead because an input
        is unresolved. A task is never assigned to an agent of another tenant."""
        if agent_tenant != item.tenant:
            # Matching compares tenants; this holds even if a queue name were ever shared.
            log.error(
                "refusing to assign %s/%s of tenant %r to agent %r of tenant %r",
                item.job_id,
                item.todo.id,
                item.tenant,
                agent_id,
                agent_tenant,
            )
            return None
        attempt = item.attempt + 1
        now = self._clock()
        task_id = item.todo.id
        timeout_at = self._timeout_at(item.todo, now)
        policy = self.policies.get(item.tenant)

        def start(job: Job) -> tuple[dict[str, Any], dict[str, ArtifactRecord]] | None:
            # The stored task, not the queue's copy, against the policy in force now: a job
            # submitted (or re-driven) under a looser policy cannot run what it now forbids.
            if policy is not None and (violation := check_task(policy, job.tasks[task_id].todo)):
                job.fail_unstarted(task_id, attempt=attempt, error=violation.task_error(), now=now)
                return None
            # Resolved in the assigning transaction (see Job.inputs_of): the attempt is sent
            # exactly the outputs and artifacts stored now; a missing one fails the task
            # (fenced) instead.
            try:
                inputs = job.inputs_of(task_id), job.artifact_inputs_of(task_id)
            except UnresolvedInput as unresolved:
                job.fail_unresolved(task_id, attempt=attempt, unresolved=unresolved, now=now)
                return None
            job.assign(
                task_id,
                attempt=attempt,
                agent_id=agent_id,
                lease_until=now + self._lease,
                now=now,
                timeout_at=timeout_at,
            )
            return inputs

        try:
            job, resolved = await self._apply(item.tenant, item.job_id, start)
        except (StaleAttempt, NotFound):
            return None
        if resolved is None:
            return None  # the task failed: an input unresolved, or refused by the policy
        inputs, input_artifacts = resolved
        return self._assignment(job, task_id, inputs=inputs, input_artifacts=input_artifacts)

    def _timeout_at(self, todo: ToDo, now: datetime) -> datetime | None:
        """The server's own bound on an attempt starting now: the agent stops it at the timeout
        and reports; past the grace the server stops waiting (see Job.lease_expired)."""
        if todo.timeout_s is None:
            return None
        return now + timedelta(seconds=todo.timeout_s) + self._timeout_grace

    @staticmethod
    def _assignment(
        job: Job,
        task_id: str,
        *,
        inputs: dict[str, Any],
        input_artifacts: dict[str, ArtifactRecord] | None = None,
    ) -> AssignmentMessage:
        """The message that starts the task's current attempt. Its deadline is the job's: the
        agent adds the task timeout itself, from its own start, so that a timed-out attempt
        says so (and not that it passed a deadline)."""
        task = job.tasks[task_id]
        return AssignmentMessage(
            tenant=job.tenant,
            job_id=job.job_id,
            todo=task.todo,
            attempt=task.attempt,
            deadline=job.options.deadline,
            inputs=inputs,
            input_artifacts=input_artifacts or {},
            trace_context=job.options.trace_context,
        )

    # -- one change: commit, then its effects --------------------------------------------------

    async def _apply(
        self,
        tenant: str,
        job_id: str,
        mutate: Callable[[Job], T],
        *,
        caller_may_leave: bool = False,
        audit: AuditEntry | None = None,
    ) -> tuple[Job, T]:
        """Commit `mutate` on the job (Store.update_job), then carry out its effects.

        `audit`: the entry of the call that asked for the change, written with it (only if
        `mutate` succeeds).

        `caller_may_leave`: the caller is an RPC its client may cancel midway, so the change
        runs apart from it (_uncancellable). The agents' side needs no such task (it cost ~10 %
        of the distributed throughput): reports finish even when their stream ends
        (ExecutorServicer), and the dispatcher and the sweeps stop only with the server, whose
        recovery re-queues what is QUEUED.
        """

        def mutate_and_note(job: Job) -> T:
            result = mutate(job)
            self._note_callbacks(job)
            if audit is not None:
                job.changes.audit.append(audit)
            return result

        async def change() -> tuple[Job, T]:
            with metrics.store_transaction("update_job"):
                job, result, changes = await self._store.update_job(tenant, job_id, mutate_and_note)
            await self._after_commit(job, changes)
            return job, result

        if caller_may_leave:
            return await self._uncancellable(change())
        return await change()

    def _note_callbacks(self, job: Job) -> None:
        """Its pending change's callback messages join it: written in its transaction."""
        if job.options.callback_url and self._callback_messages is not None:
            job.changes.callbacks += self._callback_messages(job, job.changes.events)

    async def drain_changes(self, *, timeout_s: float | None = None) -> None:
        """Wait until the changes under way (their callers may be gone) have ended."""
        if self._changing:
            await asyncio.wait(set(self._changing), timeout=timeout_s)

    async def _uncancellable(self, change: Coroutine[Any, Any, R]) -> R:
        """Run a commit and its effects to the end even when the caller is cancelled (a client
        gave up, an agent's stream ended): a commit whose next task was never queued would
        leave that task waiting for the reconciler, or for ever in the embedded mode."""
        task = asyncio.create_task(change)
        self._changing.add(task)
        task.add_done_callback(self._changing.discard)
        return await asyncio.shield(task)

    # -- after commit ---------------------------------------------------------------------

    async def _after_commit(self, job: Job, changes: JobChanges) -> None:
        metrics.observe_changes(job, changes)
        if changes.callbacks:
            self.callbacks_made()
        await carry_out(job, changes, bus=self._bus, queue=self._queue, directory=self._directory)
