"""The audit entries the orchestrator adds to a change: a task attempt's outcome as its agent
reported it, with the screenshots the attempt stored (docs/AUDIT.md)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from cpa_scheduler.domain import (
    RESULT_OK,
    AttemptRef,
    AuditAction,
    AuditActor,
    AuditEntry,
    Job,
)
from cpa_scheduler.domain.audit import MAX_AUDIT_ARTIFACTS, MAX_AUDIT_TEXT_BYTES
from cpa_scheduler.domain.errors import clip

if TYPE_CHECKING:
    from .reports import ResultReport

# Outcomes of attempts that ended without a result of their own.
CANCELLED = "CANCELLED"
HANDED_BACK = "HANDED_BACK"


def server_actor(tenant: str) -> AuditActor:
    """Who ends an attempt no agent reported on (an oversized assignment)."""
    return AuditActor(tenant=tenant, subject="scheduler")


def screenshot_ids(job: Job, ref: AttemptRef) -> tuple[str, ...]:
    """The images attempt `ref` stored (a browser action's screenshots), in the order stored."""
    task = job.tasks.get(ref.task_id)
    if task is None:
        return ()
    images = [
        artifact.artifact_id
        for attempt in task.attempts
        if attempt.number == ref.attempt
        for artifact in attempt.artifacts
        if artifact.media_type.startswith("image/")
    ]
    return tuple(images[:MAX_AUDIT_ARTIFACTS])


def task_outcome_entry(
    job: Job,
    ref: AttemptRef,
    report: ResultReport,
    *,
    actor: AuditActor,
    agent_id: str,
    entry_id: str,
    now: datetime,
) -> AuditEntry:
    """The entry of an attempt's result, written in the transaction that applies it."""
    error = report.error
    if report.cancelled:
        code, reason = CANCELLED, ""
    elif report.handed_back:
        code, reason = HANDED_BACK, ""
    elif error is not None:
        code, reason = error.code, error.reason.value if error.reason else ""
    else:
        code, reason = RESULT_OK, ""
    task = job.tasks.get(ref.task_id)
    return AuditEntry(
        entry_id=entry_id,
        tenant=job.tenant,
        create_time=now,
        subject=actor.subject,
        roles=actor.roles,
        credential_kind=actor.credential_kind,
        credential_id=actor.credential_id,
        home_tenant=actor.home_tenant,
        peer=actor.peer,
        action=AuditAction.TASK_RESULT,
        job_id=job.job_id,
        task_id=ref.task_id,
        attempt=ref.attempt,
        task_action=task.todo.action if task is not None else "",
        agent_id=agent_id,
        result_code=clip(code, MAX_AUDIT_TEXT_BYTES),
        result_reason=reason,
        result_message=clip(error.message, MAX_AUDIT_TEXT_BYTES) if error is not None else "",
        artifact_ids=screenshot_ids(job, ref),
    )
