"""The agents' side of the orchestrator: progress, results, artifacts, declines and lease
renewals, each one fenced store transaction through Orchestrator._apply. A result comes with its
audit entry (audit_entries.py).

A part of Orchestrator (its base class), apart because it is a concern of its own.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from cpa_scheduler.domain import (
    ArtifactRecord,
    AttemptRef,
    AuditActor,
    AuditEntry,
    Job,
    NotFound,
    Reason,
    StaleAttempt,
    TaskError,
)
from cpa_scheduler.storage import Store
from cpa_scheduler.telemetry.logs import job_context

from .audit_entries import server_actor, task_outcome_entry

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultReport:
    """How an attempt ended, as its agent reports it. `handed_back`: the agent gave the attempt
    up unfinished (shutting down, or declined it), so another agent takes it uncharged."""

    outputs: dict[str, Any] | None = None
    error: TaskError | None = None
    cancelled: bool = False
    handed_back: bool = False


class AgentReports:
    """The reports; what they use is the Orchestrator's."""

    _store: Store
    _clock: Callable[[], datetime]
    _lease: timedelta
    _rng: Any

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

    async def report_progress(
        self,
        tenant: str,
        agent_id: str,
        ref: AttemptRef,
        *,
        percent: float | None,
        message: str,
    ) -> None:
        """Record progress of `agent_id`'s attempt; StaleAttempt or AttemptNotHeld as for a
        result."""
        now = self._clock()

        def apply(job: Job) -> None:
            job.check_held(ref.task_id, attempt=ref.attempt, agent_id=agent_id)
            job.progress(
                ref.task_id, attempt=ref.attempt, percent=percent, message=message, now=now
            )

        await self._apply(tenant, ref.job_id, apply)

    async def report_result(
        self,
        tenant: str,
        agent_id: str | None,
        ref: AttemptRef,
        report: ResultReport,
        *,
        actor: AuditActor | None = None,
    ) -> None:
        """Apply the result `agent_id` reports; StaleAttempt when it is not the current attempt,
        AttemptNotHeld when another agent holds it (fenced in the store transaction). `agent_id`
        None: the server ends the attempt itself (no agent reported). The outcome's audit entry
        (by `actor`, the reporting agent) is written with it."""
        now = self._clock()
        entry_id = uuid.uuid4().hex
        who = actor or (
            server_actor(tenant)
            if agent_id is None
            else AuditActor(tenant=tenant, subject=f"agent:{agent_id}", roles=("agent",))
        )

        trace_context: dict[str, str] = {}

        def apply(job: Job) -> None:
            trace_context.update(job.options.trace_context)
            if agent_id is not None:
                job.check_held(ref.task_id, attempt=ref.attempt, agent_id=agent_id)
            error = report.error
            if report.cancelled or report.handed_back:
                reason = error.message if error is not None else "the agent stopped the attempt"
                job.hand_back(ref.task_id, attempt=ref.attempt, reason=reason, now=now)
            elif error is not None:
                job.fail(ref.task_id, attempt=ref.attempt, error=error, now=now, rng=self._rng)
            else:
                job.succeed(ref.task_id, attempt=ref.attempt, outputs=report.outputs or {}, now=now)
            job.changes.audit.append(
                task_outcome_entry(
                    job, ref, report, actor=who, agent_id=agent_id or "", entry_id=entry_id, now=now
                )
            )

        await self._apply(tenant, ref.job_id, apply)
        if log.isEnabledFor(logging.DEBUG):
            with job_context(
                tenant,
                ref.job_id,
                task_id=ref.task_id,
                attempt=ref.attempt,
                trace_context=trace_context,
            ):
                outcome = "failed" if report.error else "succeeded"
                log.debug("attempt %s of %s/%s %s", ref.attempt, ref.job_id, ref.task_id, outcome)

    async def store_artifact(
        self, tenant: str, job_id: str, agent_id: str, artifact: ArtifactRecord
    ) -> None:
        """Record an uploaded artifact on its task (Job.store_artifact): fenced as a report,
        StaleAttempt or AttemptNotHeld when the attempt is no longer `agent_id`'s running one.
        Its bytes are stored already; from this commit on it is listed and downloadable."""
        now = self._clock()
        await self._apply(
            tenant, job_id, lambda job: job.store_artifact(artifact, agent_id=agent_id, now=now)
        )

    async def decline(self, tenant: str, agent_id: str, ref: AttemptRef, reason: str) -> None:
        """The agent refused an assignment: give the task to someone else, uncharged
        (AttemptNotHeld when another agent holds it)."""
        declined = ResultReport(
            error=TaskError(code="DECLINED", message=f"declined by the agent: {reason}"),
            handed_back=True,
        )
        with contextlib.suppress(StaleAttempt, NotFound):
            await self.report_result(tenant, agent_id, ref, declined)

    async def assignment_too_large(
        self, tenant: str, ref: AttemptRef, *, size: int, limit: int
    ) -> None:
        """The attempt's assignment is larger than its agent may receive, so it was not sent:
        the attempt fails, not retried (the same params and inputs make the same assignment)."""
        error = TaskError(
            code=Reason.ASSIGNMENT_TOO_LARGE.value,
            message=f"the assignment of attempt {ref.attempt} is {size} bytes; at most {limit} "
            "may be sent to its agent (CPA_MAX_ASSIGNMENT_BYTES, or the agent's max_receive_bytes "
            "when smaller): the task's params and the inputs taken from upstream outputs are too "
            "large",
            retryable=False,
            reason=Reason.ASSIGNMENT_TOO_LARGE,
        )
        with contextlib.suppress(StaleAttempt, NotFound):
            await self.report_result(tenant, None, ref, ResultReport(error=error))

    async def renew_leases(
        self, tenant: str, agent_id: str, attempts: Sequence[AttemptRef]
    ) -> tuple[datetime, list[AttemptRef]]:
        """Extend the leases of the attempts `agent_id` holds; returns (lease_until, the others:
        stale, or held by another agent)."""
        lease_until = self._clock() + self._lease
        stale = await self._store.renew_leases(tenant, agent_id, attempts, lease_until)
        return lease_until, stale
