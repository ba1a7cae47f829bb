"""Conversion between domain types and the generated `_pb2` contract types.

The only module of the scheduler that imports both: everything else speaks one side.
Converting from proto also validates, naming the offending field by its request path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2
from cpa_scheduler.domain import (
    BUILTIN_ACTIONS,
    DEFAULT_RETRY_POLICY,
    AttemptState,
    InvalidArgument,
    JobState,
    Reason,
    RetryPolicy,
    Selector,
    SelectorStrategy,
    TaskState,
    ToDo,
)
from cpa_scheduler.planning import Plan

_ACTION_PREFIX = "ACTION_TYPE_"
_SELECTOR_PREFIX = "SELECTOR_STRATEGY_"
_REASON_PREFIX = "ERROR_REASON_"
_CUSTOM_ACTION = todo_pb2.ACTION_TYPE_CUSTOM


def _duration_s(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A JSON object as plain Python; numbers come back as floats (JSON has one number type)."""
    return json_format.MessageToDict(struct)


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    try:
        struct.update(dict(values))
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"not representable as JSON: {error}") from None
    return struct


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
        _duration_s(message.initial_backoff)
        if message.HasField("initial_backoff")
        else default.initial_backoff_s
    )
    max_s = (
        _duration_s(message.max_backoff)
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
        initial_backoff=_duration(policy.initial_backoff_s),
        backoff_multiplier=policy.multiplier,
        max_backoff=_duration(policy.max_backoff_s),
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
            "selector strategy must be one of css, xpath, text, role",
            field=f"{field}.selector.strategy",
        )
    return Selector(
        strategy=SelectorStrategy(name.removeprefix(_SELECTOR_PREFIX).lower()),
        value=message.value,
    )


def todo_from_proto(message: todo_pb2.ToDo, field: str = "todo") -> ToDo:
    """A validated domain ToDo; errors name the field under `field` (e.g. `spec.todos.todos[3]`)."""
    timeout_s = _duration_s(message.timeout) if message.HasField("timeout") else None
    todo = ToDo(
        id=message.id,
        action=_action_from_proto(message, field),
        description=message.description,
        selector=_selector_from_proto(message.selector, field)
        if message.HasField("selector")
        else None,
        text=message.text,
        params=struct_to_dict(message.params),
        timeout_s=timeout_s,
        depends_on=tuple(message.depends_on),
        retry_policy=retry_policy_from_proto(message.retry_policy, f"{field}.retry_policy")
        if message.HasField("retry_policy")
        else None,
        required_capabilities=frozenset(message.required_capabilities),
        required_labels=dict(message.required_labels),
        requires_approval=message.requires_approval,
    )
    todo.validate(field)
    return todo


def todos_from_proto(messages: Sequence[todo_pb2.ToDo], field: str = "todos") -> list[ToDo]:
    return [todo_from_proto(m, f"{field}[{i}]") for i, m in enumerate(messages)]


def todo_to_proto(todo: ToDo) -> todo_pb2.ToDo:
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
    if todo.params:
        message.params.CopyFrom(dict_to_struct(todo.params))
    if todo.timeout_s is not None:
        message.timeout.CopyFrom(_duration(todo.timeout_s))
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
    if plan.graph is not None:
        response.todos.extend(todo_to_proto(todo) for todo in plan.graph.ordered_todos())
        response.batches.extend(
            scheduler_service_pb2.TaskBatch(task_ids=batch)
            for batch in plan.graph.parallel_batches()
        )
    return response
