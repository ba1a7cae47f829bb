"""JSON-ready dicts for domain values, shared by every store, the event fan-out and the work queue.

Plain data only (str, numbers, bools, lists, dicts); times are RFC 3339 strings in UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cpa_scheduler.domain import (
    ArtifactRecord,
    Attempt,
    AttemptState,
    EventPayload,
    JobCancelRequested,
    JobEvent,
    JobOptions,
    JobSource,
    JobState,
    JobStateChanged,
    OutputRef,
    Reason,
    RetryPolicy,
    Selector,
    SelectorStrategy,
    SessionRestarted,
    SourceKind,
    TaskArtifactStored,
    TaskError,
    TaskProgress,
    TaskRetryScheduled,
    TaskState,
    TaskStateChanged,
    ToDo,
)

from .interface import QueuedTask

Data = dict[str, Any]


def time_to_text(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def time_from_text(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _required_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def time_to_us(value: datetime | None) -> int | None:
    """Microseconds since the epoch: a sortable integer column."""
    if value is None:
        return None
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def time_from_us(value: int | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def retry_policy_to_data(policy: RetryPolicy | None) -> Data | None:
    if policy is None:
        return None
    return {
        "max_attempts": policy.max_attempts,
        "initial_backoff_s": policy.initial_backoff_s,
        "multiplier": policy.multiplier,
        "max_backoff_s": policy.max_backoff_s,
        "jitter": policy.jitter,
        "non_retryable_codes": sorted(policy.non_retryable_codes),
    }


def retry_policy_from_data(data: Data | None) -> RetryPolicy | None:
    if data is None:
        return None
    return RetryPolicy(
        max_attempts=data["max_attempts"],
        initial_backoff_s=data["initial_backoff_s"],
        multiplier=data["multiplier"],
        max_backoff_s=data["max_backoff_s"],
        jitter=data["jitter"],
        non_retryable_codes=frozenset(data["non_retryable_codes"]),
    )


def todo_to_data(todo: ToDo) -> Data:
    return {
        "id": todo.id,
        "action": todo.action,
        "description": todo.description,
        "selector": None
        if todo.selector is None
        else {"strategy": todo.selector.strategy.value, "value": todo.selector.value},
        "text": todo.text,
        "params": dict(todo.params),
        "timeout_s": todo.timeout_s,
        "schedule_to_start_s": todo.schedule_to_start_s,
        "depends_on": list(todo.depends_on),
        "retry_policy": retry_policy_to_data(todo.retry_policy),
        "required_capabilities": sorted(todo.required_capabilities),
        "required_labels": dict(todo.required_labels),
        "requires_approval": todo.requires_approval,
        "inputs": {name: _ref_to_data(ref) for name, ref in todo.inputs.items()},
        "credential_refs": dict(todo.credential_refs),
        # Only when set: rows of tasks without a session stay as they were.
        **({"session": todo.session} if todo.session else {}),
    }


def todo_from_data(data: Data) -> ToDo:
    selector = data["selector"]
    return ToDo(
        id=data["id"],
        action=data["action"],
        description=data["description"],
        selector=None
        if selector is None
        else Selector(strategy=SelectorStrategy(selector["strategy"]), value=selector["value"]),
        text=data["text"],
        params=data["params"],
        timeout_s=data["timeout_s"],
        # Absent in rows written before schedule-to-start timeouts existed.
        schedule_to_start_s=data.get("schedule_to_start_s"),
        depends_on=tuple(data["depends_on"]),
        retry_policy=retry_policy_from_data(data["retry_policy"]),
        required_capabilities=frozenset(data["required_capabilities"]),
        required_labels=data["required_labels"],
        requires_approval=data["requires_approval"],
        # Absent in rows written before inputs existed.
        inputs={
            name: OutputRef(
                task_id=ref["task_id"],
                output_key=ref.get("output_key", ""),
                # Absent in rows written before artifact inputs existed.
                artifact_name=ref.get("artifact_name", ""),
            )
            for name, ref in data.get("inputs", {}).items()
        },
        # Absent in rows written before credential references were kept.
        credential_refs=data.get("credential_refs", {}),
        session=data.get("session", ""),
    )


def queued_task(
    *,
    tenant: str,
    job_id: str,
    todo: ToDo,
    attempt: int,
    not_before: datetime | None,
    agent_id: str,
) -> QueuedTask:
    """A QUEUED task row as the work queue takes it: a task of a session keeps the agent its
    session is bound to (the row's agent_id while QUEUED, see domain/sessions.py); any other
    task's agent_id is its last attempt's, which binds nothing."""
    return QueuedTask(
        tenant=tenant,
        job_id=job_id,
        todo=todo,
        attempt=attempt,
        not_before=not_before,
        agent_id=agent_id if todo.session else "",
    )


def _ref_to_data(ref: OutputRef) -> Data:
    if ref.artifact_name:
        return {"task_id": ref.task_id, "artifact_name": ref.artifact_name}
    return {"task_id": ref.task_id, "output_key": ref.output_key}


def artifact_to_data(artifact: ArtifactRecord) -> Data:
    return {
        "artifact_id": artifact.artifact_id,
        "task_id": artifact.task_id,
        "attempt": artifact.attempt,
        "name": artifact.name,
        "media_type": artifact.media_type,
        "size_bytes": artifact.size_bytes,
        "sha256": artifact.sha256,
        "create_time": time_to_text(artifact.create_time),
    }


def artifact_from_data(data: Data) -> ArtifactRecord:
    return ArtifactRecord(
        artifact_id=data["artifact_id"],
        task_id=data["task_id"],
        attempt=data["attempt"],
        name=data["name"],
        media_type=data["media_type"],
        size_bytes=data["size_bytes"],
        sha256=data["sha256"],
        create_time=_required_time(data["create_time"]),
    )


def queued_task_to_data(task: QueuedTask) -> Data:
    return {
        "tenant": task.tenant,
        "job_id": task.job_id,
        "todo": todo_to_data(task.todo),
        "attempt": task.attempt,
        "not_before": time_to_text(task.not_before),
        **({"agent_id": task.agent_id} if task.agent_id else {}),
        **({"trace_context": dict(task.trace_context)} if task.trace_context else {}),
    }


def queued_task_from_data(data: Data) -> QueuedTask:
    return QueuedTask(
        tenant=data["tenant"],
        job_id=data["job_id"],
        todo=todo_from_data(data["todo"]),
        attempt=data["attempt"],
        not_before=time_from_text(data["not_before"]),
        agent_id=data.get("agent_id", ""),
        trace_context=data.get("trace_context", {}),
    )


def error_to_data(error: TaskError | None) -> Data | None:
    if error is None:
        return None
    data: Data = {
        "code": error.code,
        "message": error.message,
        "retryable": error.retryable,
        "reason": None if error.reason is None else error.reason.value,
    }
    if error.details is not None:
        data["details"] = dict(error.details)
    return data


def error_from_data(data: Data | None) -> TaskError | None:
    if data is None:
        return None
    reason = data["reason"]
    return TaskError(
        code=data["code"],
        message=data["message"],
        retryable=data["retryable"],
        reason=None if reason is None else Reason(reason),
        details=data.get("details"),  # absent in errors stored before details were kept
    )


def attempt_to_data(attempt: Attempt) -> Data:
    return {
        "number": attempt.number,
        "agent_id": attempt.agent_id,
        "state": attempt.state.value,
        "start_time": time_to_text(attempt.start_time),
        "end_time": time_to_text(attempt.end_time),
        "error": error_to_data(attempt.error),
        **(
            {"artifacts": [artifact_to_data(a) for a in attempt.artifacts]}
            if attempt.artifacts
            else {}
        ),
    }


def attempt_from_data(data: Data) -> Attempt:
    return Attempt(
        number=data["number"],
        agent_id=data["agent_id"],
        state=AttemptState(data["state"]),
        start_time=_required_time(data["start_time"]),
        end_time=time_from_text(data["end_time"]),
        error=error_from_data(data["error"]),
        artifacts=[artifact_from_data(a) for a in data.get("artifacts", ())],
    )


def source_to_data(source: JobSource) -> Data:
    return {
        "kind": source.kind.value,
        "text": source.text,
        "intent": source.intent,
        "parameters": dict(source.parameters),
    }


def source_from_data(data: Data) -> JobSource:
    return JobSource(
        kind=SourceKind(data["kind"]),
        text=data["text"],
        intent=data["intent"],
        parameters=data["parameters"],
    )


def options_to_data(options: JobOptions) -> Data:
    return {
        "max_parallelism": options.max_parallelism,
        "context": dict(options.context),
        "labels": dict(options.labels),
        "deadline": time_to_text(options.deadline),
        "default_retry_policy": retry_policy_to_data(options.default_retry_policy),
        "callback_url": options.callback_url,
        # Only when set: the options of jobs without them stay as they were.
        **({"callback_receiver": options.callback_receiver} if options.callback_receiver else {}),
        **(
            {"callback_in_reply_to": options.callback_in_reply_to}
            if options.callback_in_reply_to
            else {}
        ),
        **({"trace_context": dict(options.trace_context)} if options.trace_context else {}),
    }


def options_from_data(data: Data) -> JobOptions:
    return JobOptions(
        max_parallelism=data["max_parallelism"],
        context=data["context"],
        labels=data["labels"],
        deadline=time_from_text(data["deadline"]),
        default_retry_policy=retry_policy_from_data(data["default_retry_policy"]),
        callback_url=data["callback_url"],
        callback_receiver=data.get("callback_receiver", ""),
        callback_in_reply_to=data.get("callback_in_reply_to", ""),
        trace_context=data.get("trace_context", {}),
    )


def payload_to_data(payload: EventPayload) -> Data:
    match payload:
        case JobStateChanged():
            return {
                "type": "job_state_changed",
                "from_state": None if payload.from_state is None else payload.from_state.value,
                "to_state": payload.to_state.value,
                "error": error_to_data(payload.error),
            }
        case TaskStateChanged():
            return {
                "type": "task_state_changed",
                "task_id": payload.task_id,
                "from_state": payload.from_state.value,
                "to_state": payload.to_state.value,
                "attempt": payload.attempt,
                "agent_id": payload.agent_id,
                "error": error_to_data(payload.error),
                "outputs": None if payload.outputs is None else dict(payload.outputs),
            }
        case TaskProgress():
            return {
                "type": "task_progress",
                "task_id": payload.task_id,
                "attempt": payload.attempt,
                "percent": payload.percent,
                "message": payload.message,
            }
        case TaskRetryScheduled():
            return {
                "type": "task_retry_scheduled",
                "task_id": payload.task_id,
                "failed_attempt": payload.failed_attempt,
                "next_attempt_time": time_to_text(payload.next_attempt_time),
                "error": error_to_data(payload.error),
                "lost": payload.lost,
            }
        case JobCancelRequested():
            return {"type": "job_cancel_requested", "reason": payload.reason}
        case SessionRestarted():
            return {
                "type": "session_restarted",
                "session": payload.session,
                "reason": payload.reason,
                "from_agent": payload.from_agent,
                "task_ids": list(payload.task_ids),
            }
        case TaskArtifactStored():
            return {"type": "task_artifact_stored", "artifact": artifact_to_data(payload.artifact)}


def payload_from_data(data: Mapping[str, Any]) -> EventPayload:
    kind = data["type"]
    if kind == "job_state_changed":
        from_state = data["from_state"]
        return JobStateChanged(
            from_state=None if from_state is None else JobState(from_state),
            to_state=JobState(data["to_state"]),
            error=error_from_data(data["error"]),
        )
    if kind == "task_state_changed":
        return TaskStateChanged(
            task_id=data["task_id"],
            from_state=TaskState(data["from_state"]),
            to_state=TaskState(data["to_state"]),
            attempt=data["attempt"],
            agent_id=data["agent_id"],
            error=error_from_data(data["error"]),
            outputs=data["outputs"],
        )
    if kind == "task_progress":
        return TaskProgress(
            task_id=data["task_id"],
            attempt=data["attempt"],
            percent=data["percent"],
            message=data["message"],
        )
    if kind == "session_restarted":
        return SessionRestarted(
            session=data["session"],
            reason=data["reason"],
            from_agent=data["from_agent"],
            task_ids=tuple(data["task_ids"]),
        )
    if kind == "task_retry_scheduled":
        return TaskRetryScheduled(
            task_id=data["task_id"],
            failed_attempt=data["failed_attempt"],
            next_attempt_time=_required_time(data["next_attempt_time"]),
            error=error_from_data(data["error"]),
            lost=data["lost"],
        )
    if kind == "job_cancel_requested":
        return JobCancelRequested(reason=data["reason"])
    if kind == "task_artifact_stored":
        return TaskArtifactStored(artifact=artifact_from_data(data["artifact"]))
    raise ValueError(f"unknown event type {kind!r}")


def event_to_data(event: JobEvent) -> Data:
    """The whole event, for the live fan-out between replicas."""
    return {
        "tenant": event.tenant,
        "job_id": event.job_id,
        "sequence": event.sequence,
        "create_time": time_to_text(event.create_time),
        "terminal": event.terminal,
        "payload": payload_to_data(event.payload),
    }


def event_from_data(data: Mapping[str, Any]) -> JobEvent:
    return JobEvent(
        tenant=data["tenant"],
        job_id=data["job_id"],
        sequence=data["sequence"],
        create_time=_required_time(data["create_time"]),
        terminal=data["terminal"],
        payload=payload_from_data(data["payload"]),
    )
