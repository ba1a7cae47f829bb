"""Jobs as the SchedulerService shows them (views, AIP-157) and job specs as callers send them.

Part of the conversion layer with convert.py (which converts ToDos, errors, events and agent
messages); this module holds what only the job-facing RPCs need.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cpa.scheduler.v1 import job_pb2
from cpa_scheduler.domain import (
    Attempt,
    InvalidArgument,
    Job,
    JobOptions,
    JobSource,
    Reason,
    SourceKind,
    Task,
    TaskState,
    check_labels,
)
from cpa_scheduler.planning import IntentRequest, PlanRequest, TextRequest, TodoRequest

from .artifact_convert import artifact_to_proto
from .convert import (
    attempt_state_to_proto,
    job_state_to_proto,
    retry_policy_from_proto,
    retry_policy_to_proto,
    task_error_to_proto,
    task_state_to_proto,
    todo_to_proto,
    todos_from_proto,
)
from .proto_values import dict_to_struct, set_time, struct_to_dict, time_from_proto

# -- views ------------------------------------------------------------------------------------


def is_full_view(
    view: job_pb2.JobView.ValueType, *, default_full: bool, field: str = "view"
) -> bool:
    """Whether `view` asks for the FULL job; UNSPECIFIED takes the RPC's default."""
    if view == job_pb2.JOB_VIEW_UNSPECIFIED:
        return default_full
    if view == job_pb2.JOB_VIEW_FULL:
        return True
    if view == job_pb2.JOB_VIEW_BASIC:
        return False
    raise InvalidArgument(f"unknown job view {view}", field=field)


# -- job specs (requests) --------------------------------------------------------------------


def spec_from_proto(
    spec: job_pb2.JobSpec, *, default_max_parallelism: int, field: str = "spec"
) -> tuple[PlanRequest, JobSource, JobOptions]:
    """What to plan, how to describe it and how to run it; errors name fields under `field`."""
    source_kind = spec.WhichOneof("source")
    request: PlanRequest
    if source_kind == "text":
        if not spec.text.strip():
            raise InvalidArgument(
                "text is empty", reason=Reason.MISSING_FIELD, field=f"{field}.text"
            )
        request = TextRequest(spec.text)
        source = JobSource(kind=SourceKind.TEXT, text=spec.text)
    elif source_kind == "intent":
        if not spec.intent.name:
            raise InvalidArgument(
                "intent name is empty", reason=Reason.MISSING_FIELD, field=f"{field}.intent.name"
            )
        parameters = struct_to_dict(spec.intent.parameters, f"{field}.intent.parameters")
        request = IntentRequest(spec.intent.name, parameters)
        source = JobSource(kind=SourceKind.INTENT, intent=spec.intent.name, parameters=parameters)
    elif source_kind == "todos":
        if not spec.todos.todos:
            raise InvalidArgument(
                "a job needs at least one task",
                reason=Reason.EMPTY_GRAPH,
                field=f"{field}.todos.todos",
            )
        request = TodoRequest(todos_from_proto(spec.todos.todos, f"{field}.todos.todos"))
        source = JobSource(kind=SourceKind.TODOS)
    else:
        raise InvalidArgument(
            "the spec names no work: set text, intent or todos",
            reason=Reason.MISSING_FIELD,
            field=f"{field}.source",
        )
    if spec.max_parallelism < 0:
        raise InvalidArgument(
            f"max_parallelism must not be negative, got {spec.max_parallelism}",
            field=f"{field}.max_parallelism",
        )
    deadline = None
    if spec.HasField("deadline"):
        deadline = time_from_proto(spec.deadline, f"{field}.deadline")
        if deadline <= datetime.now(UTC):
            # A job that could only fail: refused as a LAM request's passed deadline is.
            raise InvalidArgument(
                f"deadline {deadline.isoformat()} has already passed", field=f"{field}.deadline"
            )
    options = JobOptions(
        max_parallelism=spec.max_parallelism or default_max_parallelism,
        context=struct_to_dict(spec.context, f"{field}.context"),
        labels=_labels(spec, f"{field}.labels"),
        deadline=deadline,
        default_retry_policy=retry_policy_from_proto(
            spec.default_retry_policy, f"{field}.default_retry_policy"
        )
        if spec.HasField("default_retry_policy")
        else None,
        callback_url=spec.callback_url,
    )
    return request, source, options


def _labels(spec: job_pb2.JobSpec, field: str) -> dict[str, str]:
    labels = dict(spec.labels)
    check_labels(labels, field)
    return labels


def _spec_to_proto(job: Job, *, full: bool) -> job_pb2.JobSpec:
    """The spec as asked for. Explicit ToDos are not repeated here: they are the tasks' `todo`
    (spec.todos is set but empty, so the source still reads `todos`)."""
    spec = job_pb2.JobSpec(
        labels=dict(job.options.labels),
        max_parallelism=job.options.max_parallelism,
        callback_url=job.options.callback_url,
    )
    if full:
        spec.context.CopyFrom(dict_to_struct(job.options.context))
    match job.source.kind:
        case SourceKind.TEXT:
            spec.text = job.source.text
        case SourceKind.INTENT:
            spec.intent.name = job.source.intent
            if full:
                spec.intent.parameters.CopyFrom(dict_to_struct(job.source.parameters))
        case SourceKind.TODOS:
            spec.todos.SetInParent()
    set_time(spec, "deadline", job.options.deadline)
    if job.options.default_retry_policy is not None:
        spec.default_retry_policy.CopyFrom(retry_policy_to_proto(job.options.default_retry_policy))
    return spec


# -- jobs and tasks ------------------------------------------------------------------------


def _attempt_to_proto(attempt: Attempt) -> job_pb2.Attempt:
    message = job_pb2.Attempt(
        number=attempt.number,
        agent_id=attempt.agent_id,
        state=attempt_state_to_proto(attempt.state),
    )
    set_time(message, "start_time", attempt.start_time)
    set_time(message, "end_time", attempt.end_time)
    if attempt.error is not None:
        message.error.CopyFrom(task_error_to_proto(attempt.error))
    return message


def task_to_proto(
    task: Task, *, full: bool = True, waiting_reason: str = "", job_id: str = ""
) -> job_pb2.Task:
    """The task; without ToDo params and outputs unless `full` (artifacts in both views)."""
    message = job_pb2.Task(
        todo=todo_to_proto(task.todo, params=full),
        state=task_state_to_proto(task.state),
        attempt=task.attempt,
        attempts=[_attempt_to_proto(a) for a in task.attempts],
        artifacts=[artifact_to_proto(job_id, a) for a in task.artifacts],
        waiting_reason=waiting_reason,
    )
    if full and task.outputs is not None:
        message.outputs.CopyFrom(dict_to_struct(task.outputs))
    if task.error is not None:
        message.error.CopyFrom(task_error_to_proto(task.error))
    for name in ("next_attempt_time", "queue_time", "start_time", "end_time"):
        set_time(message, name, getattr(task, name))
    return message


def job_to_proto(
    job: Job, *, full: bool = True, waiting_reason: Callable[[Job, Task], str] | None = None
) -> job_pb2.Job:
    """The job in the FULL view (every payload once), or BASIC (`full` false: no ToDo params,
    outputs, context or intent parameters); `waiting_reason` explains each QUEUED task
    (derived at read time)."""
    message = job_pb2.Job(
        job_id=job.job_id,
        tenant=job.tenant,
        request_id=job.request_id,
        spec=_spec_to_proto(job, full=full),
        intent=job.intent,
        state=job_state_to_proto(job.state),
        tasks=[
            task_to_proto(
                task,
                full=full,
                waiting_reason=waiting_reason(job, task)
                if waiting_reason is not None and task.state is TaskState.QUEUED
                else "",
                job_id=job.job_id,
            )
            for task in job.tasks.values()
        ],
        dead_lettered=job.dead_lettered,
        cancel_requested=job.cancel_requested,
        cancel_reason=job.cancel_message,
        retry_count=job.retry_count,
        conversation_id=job.conversation_id,
        last_event_sequence=job.last_event_sequence,
    )
    if job.error is not None:
        message.error.CopyFrom(task_error_to_proto(job.error))
    for name in ("create_time", "update_time", "start_time", "end_time"):
        set_time(message, name, getattr(job, name))
    return message
