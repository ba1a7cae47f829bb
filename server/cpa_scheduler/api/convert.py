"""Conversion between domain types and the generated `_pb2` contract types.

The only module of the scheduler that imports both: everything else speaks one side.
Converting from proto also validates, naming the offending field by its request path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cpa.common.v1 import agent_capabilities_pb2, error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2
from cpa.scheduler.v1 import agent_pb2, job_event_pb2, job_pb2, scheduler_service_pb2
from cpa_scheduler.dispatch import (
    AgentProfile,
    CancelMessage,
    Outbound,
    SessionEndMessage,
)
from cpa_scheduler.dispatch.directory import AgentRecord
from cpa_scheduler.domain import (
    BUILTIN_ACTIONS,
    DEFAULT_RETRY_POLICY,
    MAX_NAME_CHARS,
    AgentState,
    AttemptRef,
    AttemptState,
    InvalidArgument,
    JobCancelRequested,
    JobEvent,
    JobState,
    JobStateChanged,
    OutputRef,
    Reason,
    RetryPolicy,
    Selector,
    SelectorStrategy,
    SessionRestarted,
    TaskArtifactStored,
    TaskError,
    TaskProgress,
    TaskRetryScheduled,
    TaskState,
    TaskStateChanged,
    ToDo,
    check_labels,
    check_names,
    without_nul,
)
from cpa_scheduler.orchestration import ResultReport
from cpa_scheduler.planning import Plan

from .artifact_convert import artifact_to_proto
from .ids import bounded_id, required_id
from .plan_views import add_planning
from .proto_values import (
    check_text,
    dict_to_struct,
    duration,
    duration_s,
    set_time,
    struct_to_dict,
    timestamp,
)

_ACTION_PREFIX = "ACTION_TYPE_"
_SELECTOR_PREFIX = "SELECTOR_STRATEGY_"
_REASON_PREFIX = "ERROR_REASON_"
_CUSTOM_ACTION = todo_pb2.ACTION_TYPE_CUSTOM


def reason_to_proto(reason: Reason) -> error_pb2.ErrorReason.ValueType:
    return error_pb2.ErrorReason.Value(_REASON_PREFIX + reason.value)


def reason_from_proto(value: error_pb2.ErrorReason.ValueType) -> Reason | None:
    """The domain reason of an enum value; None for UNSPECIFIED or a value this build lacks."""
    try:
        name = error_pb2.ErrorReason.Name(value)
    except ValueError:
        return None
    return Reason.__members__.get(name.removeprefix(_REASON_PREFIX))


def job_state_to_proto(state: JobState) -> job_pb2.JobState.ValueType:
    return job_pb2.JobState.Value(f"JOB_STATE_{state.value}")


def job_state_from_proto(value: job_pb2.JobState.ValueType) -> JobState:
    return JobState(job_pb2.JobState.Name(value).removeprefix("JOB_STATE_"))


def task_state_to_proto(state: TaskState) -> job_pb2.TaskState.ValueType:
    return job_pb2.TaskState.Value(f"TASK_STATE_{state.value}")


def task_state_from_proto(value: job_pb2.TaskState.ValueType) -> TaskState:
    return TaskState(job_pb2.TaskState.Name(value).removeprefix("TASK_STATE_"))


def attempt_state_to_proto(state: AttemptState) -> job_pb2.AttemptState.ValueType:
    return job_pb2.AttemptState.Value(f"ATTEMPT_STATE_{state.value}")


def attempt_state_from_proto(value: job_pb2.AttemptState.ValueType) -> AttemptState:
    return AttemptState(job_pb2.AttemptState.Name(value).removeprefix("ATTEMPT_STATE_"))


def retry_policy_from_proto(message: todo_pb2.RetryPolicy, field: str) -> RetryPolicy:
    """Unset fields take the defaults; set fields are validated, errors name `field`.<name>."""
    default = DEFAULT_RETRY_POLICY
    initial_s = (
        duration_s(message.initial_backoff, f"{field}.initial_backoff")
        if message.HasField("initial_backoff")
        else default.initial_backoff_s
    )
    max_s = (
        duration_s(message.max_backoff, f"{field}.max_backoff")
        if message.HasField("max_backoff")
        else max(default.max_backoff_s, initial_s)
    )
    try:
        return RetryPolicy(
            max_attempts=message.max_attempts
            if message.HasField("max_attempts")
            else default.max_attempts,
            initial_backoff_s=initial_s,
            multiplier=message.backoff_multiplier
            if message.HasField("backoff_multiplier")
            else default.multiplier,
            max_backoff_s=max_s,
            jitter=message.jitter if message.HasField("jitter") else default.jitter,
            non_retryable_codes=frozenset(message.non_retryable_codes),
        )
    except InvalidArgument as error:
        # The policy names its fields from "retry_policy"; re-root them at the request path.
        error.field = field + error.field.removeprefix("retry_policy")
        raise


def retry_policy_to_proto(policy: RetryPolicy) -> todo_pb2.RetryPolicy:
    return todo_pb2.RetryPolicy(
        max_attempts=policy.max_attempts,
        initial_backoff=duration(policy.initial_backoff_s),
        backoff_multiplier=policy.multiplier,
        max_backoff=duration(policy.max_backoff_s),
        jitter=policy.jitter,
        non_retryable_codes=sorted(policy.non_retryable_codes),
    )


def _action_from_proto(message: todo_pb2.ToDo, field: str) -> str:
    if message.action == todo_pb2.ACTION_TYPE_UNSPECIFIED:
        raise InvalidArgument(
            f"task {message.id!r} has no action",
            reason=Reason.MISSING_FIELD,
            field=f"{field}.action",
        )
    if message.action == _CUSTOM_ACTION:
        if not message.custom_action:
            raise InvalidArgument(
                f"task {message.id!r}: ACTION_TYPE_CUSTOM needs custom_action",
                reason=Reason.MISSING_FIELD,
                field=f"{field}.custom_action",
            )
        if message.custom_action in BUILTIN_ACTIONS:
            raise InvalidArgument(
                f"task {message.id!r}: {message.custom_action!r} is a built-in action; "
                f"use ACTION_TYPE_{message.custom_action.upper()}",
                reason=Reason.UNKNOWN_ACTION,
                field=f"{field}.custom_action",
            )
        return message.custom_action
    try:
        name = todo_pb2.ActionType.Name(message.action)
    except ValueError:
        raise InvalidArgument(
            f"task {message.id!r}: unknown action type {message.action}",
            reason=Reason.UNKNOWN_ACTION,
            field=f"{field}.action",
        ) from None
    if message.custom_action:
        raise InvalidArgument(
            f"task {message.id!r}: custom_action is only allowed with ACTION_TYPE_CUSTOM",
            field=f"{field}.custom_action",
        )
    return name.removeprefix(_ACTION_PREFIX).lower()


def _selector_from_proto(message: todo_pb2.Selector, field: str) -> Selector:
    try:
        name = todo_pb2.SelectorStrategy.Name(message.strategy)
    except ValueError:
        name = ""
    if message.strategy == todo_pb2.SELECTOR_STRATEGY_UNSPECIFIED or not name:
        raise InvalidArgument(
            "selector strategy must be one of css, xpath, text, role, test_id",
            field=f"{field}.selector.strategy",
        )
    return Selector(
        strategy=SelectorStrategy(name.removeprefix(_SELECTOR_PREFIX).lower()),
        value=message.value,
    )


def _inputs_from_proto(message: todo_pb2.ToDo, field: str) -> dict[str, OutputRef]:
    """The inputs by name (sorted: a proto map has no order); ToDo.validate checks the rest."""
    inputs: dict[str, OutputRef] = {}
    for name in sorted(message.inputs):
        ref = message.inputs[name]
        # Artifact inputs are resolved at assignment (Job.artifact_inputs_of).
        inputs[name] = OutputRef(
            task_id=ref.task_id, output_key=ref.output_key, artifact_name=ref.artifact_name
        )
    return inputs


def todo_from_proto(message: todo_pb2.ToDo, field: str = "todo") -> ToDo:
    """A validated domain ToDo; errors name the field under `field` (e.g. `spec.todos.todos[3]`)."""
    timeout_s = (
        duration_s(message.timeout, f"{field}.timeout") if message.HasField("timeout") else None
    )
    schedule_to_start_s = (
        duration_s(message.schedule_to_start_timeout, f"{field}.schedule_to_start_timeout")
        if message.HasField("schedule_to_start_timeout")
        else None
    )
    todo = ToDo(
        id=message.id,
        action=_action_from_proto(message, field),
        description=message.description,
        selector=_selector_from_proto(message.selector, field)
        if message.HasField("selector")
        else None,
        text=message.text,
        params=struct_to_dict(message.params, f"{field}.params"),
        timeout_s=timeout_s,
        schedule_to_start_s=schedule_to_start_s,
        depends_on=tuple(message.depends_on),
        retry_policy=retry_policy_from_proto(message.retry_policy, f"{field}.retry_policy")
        if message.HasField("retry_policy")
        else None,
        required_capabilities=frozenset(message.required_capabilities),
        required_labels=dict(message.required_labels),
        requires_approval=message.requires_approval,
        inputs=_inputs_from_proto(message, field),
        credential_refs=dict(message.credential_refs),
        session=message.session,
    )
    try:
        todo.validate(field)
    except InvalidArgument as error:
        # The domain knows one `action`; on the wire a custom name is in custom_action, so the
        # field at fault is that one.
        if message.action == _CUSTOM_ACTION and error.field == f"{field}.action":
            error.field = f"{field}.custom_action"
        raise
    return todo


def todos_from_proto(messages: Sequence[todo_pb2.ToDo], field: str = "todos") -> list[ToDo]:
    return [todo_from_proto(m, f"{field}[{i}]") for i, m in enumerate(messages)]


def _ref_to_proto(ref: OutputRef) -> todo_pb2.OutputReference:
    if ref.artifact_name:
        return todo_pb2.OutputReference(task_id=ref.task_id, artifact_name=ref.artifact_name)
    return todo_pb2.OutputReference(task_id=ref.task_id, output_key=ref.output_key)


def todo_to_proto(todo: ToDo, *, params: bool = True) -> todo_pb2.ToDo:
    """The ToDo; without its params when `params` is false (a job's BASIC view)."""
    if todo.is_builtin_action:
        action = todo_pb2.ActionType.Value(_ACTION_PREFIX + todo.action.upper())
        custom_action = ""
    else:
        action, custom_action = _CUSTOM_ACTION, todo.action
    message = todo_pb2.ToDo(
        id=todo.id,
        action=action,
        custom_action=custom_action,
        description=todo.description,
        text=todo.text,
        depends_on=list(todo.depends_on),
        required_capabilities=sorted(todo.required_capabilities),
        required_labels=dict(todo.required_labels),
        requires_approval=todo.requires_approval,
        inputs={name: _ref_to_proto(ref) for name, ref in todo.inputs.items()},
        credential_refs=dict(todo.credential_refs),
        session=todo.session,
    )
    if todo.selector is not None:
        message.selector.CopyFrom(
            todo_pb2.Selector(
                strategy=todo_pb2.SelectorStrategy.Value(
                    _SELECTOR_PREFIX + todo.selector.strategy.value.upper()
                ),
                value=todo.selector.value,
            )
        )
    if params and todo.params:
        message.params.CopyFrom(dict_to_struct(todo.params))
    if todo.timeout_s is not None:
        message.timeout.CopyFrom(duration(todo.timeout_s))
    if todo.schedule_to_start_s is not None:
        message.schedule_to_start_timeout.CopyFrom(duration(todo.schedule_to_start_s))
    if todo.retry_policy is not None:
        message.retry_policy.CopyFrom(retry_policy_to_proto(todo.retry_policy))
    return message


def plan_to_preview_proto(plan: Plan) -> scheduler_service_pb2.PreviewPlanResponse:
    """The PreviewPlan answer: ToDos in topological order and the batches that may run together."""
    response = scheduler_service_pb2.PreviewPlanResponse(
        intent=plan.intent,
        parameters=dict_to_struct(plan.parameters),
        candidates=[
            scheduler_service_pb2.RouteCandidate(intent=c.intent, score=c.score)
            for c in plan.candidates
        ],
    )
    add_planning(response, plan)
    if plan.graph is not None:
        response.todos.extend(todo_to_proto(todo) for todo in plan.graph.ordered_todos())
        response.batches.extend(
            scheduler_service_pb2.TaskBatch(task_ids=batch)
            for batch in plan.graph.parallel_batches()
        )
    return response


# -- jobs, tasks, events -------------------------------------------------------------------


def task_error_to_proto(error: TaskError) -> error_pb2.TaskError:
    message = error_pb2.TaskError(
        code=error.code,
        message=error.message,
        retryable=error.retryable,
        reason=reason_to_proto(error.reason)
        if error.reason is not None
        else error_pb2.ERROR_REASON_UNSPECIFIED,
    )
    if error.details is not None:
        message.details.CopyFrom(dict_to_struct(error.details))
    return message


# The key of the details that replace an agent's details the server did not keep.
DETAILS_DROPPED_KEY = "details_dropped"


def task_error_from_proto(error: error_pb2.TaskError, *, details_max_bytes: int) -> TaskError:
    """An agent's error (TaskError bounds its message and code; see error_details for its
    details)."""
    return TaskError(
        code=error.code or "FAILED",
        message=error.message,
        retryable=error.retryable,
        reason=reason_from_proto(error.reason),
        details=error_details(error, max_bytes=details_max_bytes),
    )


def error_details(error: error_pb2.TaskError, *, max_bytes: int) -> dict[str, Any] | None:
    """The error's details as the server keeps them: None when the agent sent none; as sent
    when their compact JSON has at most `max_bytes` bytes; else (or when JSON cannot hold them:
    too deep, NaN) only {DETAILS_DROPPED_KEY: why}. They are stored with every attempt and sent
    in every view of the job, hence the bound; never a reason to refuse the agent's report,
    which would leave the attempt unrecorded."""
    if not error.HasField("details"):
        return None
    try:
        details = struct_to_dict(error.details, "error.details")
    except InvalidArgument as invalid:
        return {DETAILS_DROPPED_KEY: f"not kept: {invalid.field}: {invalid.message}"}
    size = len(json.dumps(details, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        return {
            DETAILS_DROPPED_KEY: f"not kept: {size} bytes of JSON, over the server's "
            f"{max_bytes} (CPA_TASK_ERROR_DETAILS_MAX_BYTES)"
        }
    return details


def event_to_proto(event: JobEvent) -> job_event_pb2.JobEvent:
    message = job_event_pb2.JobEvent(
        job_id=event.job_id,
        sequence=event.sequence,
        terminal=event.terminal,
        create_time=timestamp(event.create_time),
    )
    payload = event.payload
    match payload:
        case JobStateChanged():
            change = message.job_state_changed
            if payload.from_state is not None:
                change.from_state = job_state_to_proto(payload.from_state)
            change.to_state = job_state_to_proto(payload.to_state)
            if payload.error is not None:
                change.error.CopyFrom(task_error_to_proto(payload.error))
        case TaskStateChanged():
            task_change = message.task_state_changed
            task_change.task_id = payload.task_id
            task_change.from_state = task_state_to_proto(payload.from_state)
            task_change.to_state = task_state_to_proto(payload.to_state)
            task_change.attempt = payload.attempt
            task_change.agent_id = payload.agent_id
            if payload.error is not None:
                task_change.error.CopyFrom(task_error_to_proto(payload.error))
            if payload.outputs is not None:
                task_change.outputs.CopyFrom(dict_to_struct(payload.outputs))
        case TaskProgress():
            progress = message.task_progress
            progress.task_id = payload.task_id
            progress.attempt = payload.attempt
            if payload.percent is not None:
                progress.percent = payload.percent
            progress.message = payload.message
        case TaskRetryScheduled():
            retry = message.task_retry_scheduled
            retry.task_id = payload.task_id
            retry.failed_attempt = payload.failed_attempt
            retry.next_attempt_time.CopyFrom(timestamp(payload.next_attempt_time))
            retry.lost = payload.lost
            if payload.error is not None:
                retry.error.CopyFrom(task_error_to_proto(payload.error))
        case JobCancelRequested():
            message.job_cancel_requested.reason = payload.reason
        case SessionRestarted():
            restarted = message.session_restarted
            restarted.session = payload.session
            restarted.reason = payload.reason
            restarted.from_agent = payload.from_agent
            restarted.task_ids.extend(payload.task_ids)
        case TaskArtifactStored():
            stored = message.task_artifact_stored
            stored.task_id = payload.artifact.task_id
            stored.attempt = payload.artifact.attempt
            stored.artifact.CopyFrom(artifact_to_proto(event.job_id, payload.artifact))
    return message


# -- agents ---------------------------------------------------------------------------------


def _attempt_ref(message: executor_service_pb2.RunningAttempt) -> AttemptRef:
    return AttemptRef(message.job_id, message.task_id, message.attempt)


def attempt_refs_from_proto(
    messages: Sequence[executor_service_pb2.RunningAttempt],
) -> list[AttemptRef]:
    return [_attempt_ref(m) for m in messages]


def attempt_refs_to_proto(refs: Sequence[AttemptRef]) -> list[executor_service_pb2.RunningAttempt]:
    return [
        executor_service_pb2.RunningAttempt(job_id=r.job_id, task_id=r.task_id, attempt=r.attempt)
        for r in refs
    ]


def profile_from_hello(hello: executor_service_pb2.Hello, *, default_tenant: str) -> AgentProfile:
    """The agent as its hello describes it; errors name fields under `hello`. Everything here
    is kept for the session's life and shown by ListAgents: bounded, and no text holds U+0000
    (refusing a hello loses nothing: the agent holds no attempt of this session yet)."""
    required_id(hello.agent_id, "hello.agent_id")
    bounded_id(hello.tenant, "hello.tenant")
    for name in ("name", "version"):
        if len(getattr(hello, name)) > MAX_NAME_CHARS:
            raise InvalidArgument(
                f"hello.{name} is longer than {MAX_NAME_CHARS} characters", field=f"hello.{name}"
            )
    capabilities = hello.capabilities
    check_names(capabilities.actions, "hello.capabilities.actions")
    check_names(capabilities.capabilities, "hello.capabilities.capabilities")
    check_labels(capabilities.labels, "hello.capabilities.labels")
    if capabilities.slots < 1:
        raise InvalidArgument(
            f"an agent needs at least one slot, got {capabilities.slots}",
            field="hello.capabilities.slots",
        )
    check_text(hello, "hello")  # the rest: name, version, resume_session_id, running attempts
    return AgentProfile(
        agent_id=hello.agent_id,
        tenant=hello.tenant or default_tenant,
        name=hello.name,
        version=hello.version,
        actions=frozenset(capabilities.actions),
        capabilities=frozenset(capabilities.capabilities),
        labels=dict(capabilities.labels),
        slots=capabilities.slots,
    )


def outbound_to_proto(message: Outbound) -> executor_service_pb2.ConnectResponse:
    if isinstance(message, SessionEndMessage):
        return executor_service_pb2.ConnectResponse(
            session_ended=executor_service_pb2.SessionEnded(
                job_id=message.job_id, session=message.session, reason=message.reason
            )
        )
    if isinstance(message, CancelMessage):
        ref = message.attempt
        return executor_service_pb2.ConnectResponse(
            cancel=executor_service_pb2.CancelAttempt(
                job_id=ref.job_id, task_id=ref.task_id, attempt=ref.attempt, reason=message.reason
            )
        )
    assignment = executor_service_pb2.Assignment(
        job_id=message.job_id,
        todo=todo_to_proto(message.todo),
        attempt=message.attempt,
        tenant=message.tenant,
        # Already merged with the LAM request's Security.credential_refs when the job was planned.
        credential_refs=dict(message.todo.credential_refs),
        trace_context=dict(message.trace_context),
    )
    if message.inputs:
        assignment.inputs.CopyFrom(dict_to_struct(message.inputs))
    for name, artifact in message.input_artifacts.items():
        assignment.input_artifacts[name].CopyFrom(artifact_to_proto(message.job_id, artifact))
    set_time(assignment, "deadline", message.deadline)
    return executor_service_pb2.ConnectResponse(assignment=assignment)


# Error code an agent uses for attempts it hands back while shutting down (see cpa_agent).
AGENT_SHUTDOWN_CODE = "AGENT_SHUTDOWN"
# Error code of an attempt whose reported outputs the server could not accept.
INVALID_OUTPUT_CODE = "INVALID_OUTPUT"


def progress_from_proto(
    progress: executor_service_pb2.Progress,
) -> tuple[AttemptRef, float | None, str]:
    """The attempt, percent and message of an agent's progress; a percent outside 0..100 (or
    NaN) is refused (INVALID_FIELD, field progress.percent): watchers draw bars with it. A
    U+0000 in the message is replaced by U+FFFD (as in an error's message: TaskError)."""
    percent = progress.percent if progress.HasField("percent") else None
    if percent is not None and not 0 <= percent <= 100:  # NaN fails both comparisons
        raise InvalidArgument(
            f"progress percent must be 0 to 100, got {percent}", field="progress.percent"
        )
    ref = AttemptRef(progress.job_id, progress.task_id, progress.attempt)
    return ref, percent, without_nul(progress.message)


def result_from_proto(
    result: executor_service_pb2.Result, *, details_max_bytes: int
) -> tuple[AttemptRef, ResultReport]:
    """The agent's result; its error's details bounded to `details_max_bytes` (error_details)."""
    ref = AttemptRef(result.job_id, result.task_id, result.attempt)
    if result.WhichOneof("outcome") == "error":
        error = task_error_from_proto(result.error, details_max_bytes=details_max_bytes)
        return ref, ResultReport(
            error=error,
            cancelled=result.cancelled,
            handed_back=error.code == AGENT_SHUTDOWN_CODE,
        )
    if result.cancelled:
        return ref, ResultReport(cancelled=True)
    try:
        outputs = struct_to_dict(result.outputs, "result.outputs")
    except InvalidArgument as error:
        # Outputs that could not be written back into replies (NaN, too deep) fail the attempt
        # for good: refusing the report would leave the agent resending it for ever.
        return ref, ResultReport(
            error=TaskError(
                code=INVALID_OUTPUT_CODE,
                message=f"the agent's outputs were refused: {error.field}: {error.message}",
                reason=error.reason,
            )
        )
    return ref, ResultReport(outputs=outputs)


_AGENT_STATES = {
    AgentState.CONNECTED: agent_pb2.AGENT_STATE_CONNECTED,
    AgentState.DRAINING: agent_pb2.AGENT_STATE_DRAINING,
    AgentState.DISCONNECTED: agent_pb2.AGENT_STATE_DISCONNECTED,
}


def agent_to_proto(record: AgentRecord) -> agent_pb2.Agent:
    profile = record.profile
    message = agent_pb2.Agent(
        agent_id=profile.agent_id,
        name=profile.name,
        tenant=profile.tenant,
        capabilities=agent_capabilities_pb2.AgentCapabilities(
            actions=sorted(profile.actions),
            capabilities=sorted(profile.capabilities),
            labels=dict(profile.labels),
            slots=profile.slots,
        ),
        state=_AGENT_STATES[record.state],
        replica_id=record.replica_id,
        running_tasks=record.running_tasks,
        free_credits=record.free_credits,
        version=profile.version,
    )
    set_time(message, "connect_time", record.connect_time)
    set_time(message, "last_seen_time", record.last_seen_time)
    return message


def watch_response_bytes(event: JobEvent) -> bytes:
    """The serialized WatchJobResponse carrying `event`: made once per event and sent as is to
    every watcher of the job (see api/watch.py)."""
    return scheduler_service_pb2.WatchJobResponse(event=event_to_proto(event)).SerializeToString()


def heartbeat_response_bytes(now: datetime) -> bytes:
    """The serialized WatchJobResponse of a heartbeat: no event, the server's time."""
    return scheduler_service_pb2.WatchJobResponse(heartbeat=timestamp(now)).SerializeToString()
