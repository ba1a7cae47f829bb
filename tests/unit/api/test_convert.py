"""Domain <-> proto conversion: round trips, defaults, and the field each bad input is blamed on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import duration_pb2, struct_pb2

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.scheduler.v1 import job_pb2
from cpa_scheduler.api import convert, proto_values
from cpa_scheduler.dispatch import AssignmentMessage
from cpa_scheduler.domain import (
    DEFAULT_RETRY_POLICY,
    AttemptState,
    InvalidArgument,
    JobState,
    OutputRef,
    Reason,
    RetryPolicy,
    Selector,
    SelectorStrategy,
    TaskState,
    ToDo,
)


def _params(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def test_every_domain_reason_has_a_proto_value_and_back() -> None:
    proto_names = {
        name.removeprefix("ERROR_REASON_")
        for name in error_pb2.ErrorReason.DESCRIPTOR.values_by_name
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert proto_names == {reason.value for reason in Reason}
    for reason in Reason:
        assert convert.reason_from_proto(convert.reason_to_proto(reason)) is reason


def test_state_enums_mirror_the_contract_both_ways() -> None:
    pairs: tuple[tuple[Any, str, Any, Any, Any], ...] = (
        (
            job_pb2.JobState,
            "JOB_STATE_",
            JobState,
            convert.job_state_to_proto,
            convert.job_state_from_proto,
        ),
        (
            job_pb2.TaskState,
            "TASK_STATE_",
            TaskState,
            convert.task_state_to_proto,
            convert.task_state_from_proto,
        ),
        (
            job_pb2.AttemptState,
            "ATTEMPT_STATE_",
            AttemptState,
            convert.attempt_state_to_proto,
            convert.attempt_state_from_proto,
        ),
    )
    for wrapper, prefix, domain_enum, to_proto, from_proto in pairs:
        proto_names = {
            n.removeprefix(prefix)
            for n in wrapper.DESCRIPTOR.values_by_name
            if not n.endswith("UNSPECIFIED")
        }
        assert proto_names == {member.value for member in domain_enum}, prefix
        for member in domain_enum:
            assert from_proto(to_proto(member)) is member


def test_unspecified_or_unknown_reason_maps_to_none() -> None:
    assert convert.reason_from_proto(error_pb2.ERROR_REASON_UNSPECIFIED) is None
    assert convert.reason_from_proto(9999) is None  # type: ignore[arg-type]


def test_full_todo_round_trips() -> None:
    todo = ToDo(
        id="download",
        action="playwright",
        description="download the invoice",
        selector=Selector(strategy=SelectorStrategy.ROLE, value="link[name=Invoice]"),
        text="",
        params={"op": "download", "retries": 2.0, "nested": {"a": [1.0, "b"]}},
        timeout_s=12.5,
        depends_on=("login",),
        retry_policy=RetryPolicy(
            max_attempts=5,
            initial_backoff_s=0.5,
            multiplier=3.0,
            max_backoff_s=30.0,
            jitter=0.0,
            non_retryable_codes=frozenset({"LOGIN_FAILED", "NOT_FOUND"}),
        ),
        required_capabilities=frozenset({"browser:chromium"}),
        required_labels={"site": "berlin"},
        requires_approval=True,
        inputs={"session": OutputRef(task_id="login", output_key="cookie")},
    )
    message = convert.todo_to_proto(todo)
    assert message.inputs["session"] == todo_pb2.OutputReference(
        task_id="login", output_key="cookie"
    )
    assert message.action == todo_pb2.ACTION_TYPE_PLAYWRIGHT
    assert message.custom_action == ""
    assert message.timeout == duration_pb2.Duration(seconds=12, nanos=500_000_000)
    assert convert.todo_from_proto(message) == todo


def test_custom_action_round_trips_by_name() -> None:
    todo = ToDo(id="t1", action="echo", params={"x": "y"})
    message = convert.todo_to_proto(todo)
    assert (message.action, message.custom_action) == (todo_pb2.ACTION_TYPE_CUSTOM, "echo")
    assert convert.todo_from_proto(message) == todo


def test_unset_retry_fields_take_defaults_and_zero_means_zero() -> None:
    unset = convert.retry_policy_from_proto(todo_pb2.RetryPolicy(), "p")
    assert unset == DEFAULT_RETRY_POLICY
    zero_jitter = convert.retry_policy_from_proto(todo_pb2.RetryPolicy(jitter=0.0), "p")
    assert zero_jitter.jitter == 0.0
    assert zero_jitter.max_attempts == DEFAULT_RETRY_POLICY.max_attempts


@pytest.mark.parametrize(
    ("message", "reason", "field", "message_part"),
    [
        (
            todo_pb2.ToDo(id="a"),
            Reason.MISSING_FIELD,
            "todos[0].action",
            "has no action",
        ),
        (
            todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CUSTOM),
            Reason.MISSING_FIELD,
            "todos[0].custom_action",
            "needs custom_action",
        ),
        (
            todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="click"),
            Reason.UNKNOWN_ACTION,
            "todos[0].custom_action",
            "use ACTION_TYPE_CLICK",
        ),
        (
            todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="Bad Name!"),
            Reason.UNKNOWN_ACTION,
            "todos[0].custom_action",
            "custom action 'Bad Name!'",
        ),
        (
            todo_pb2.ToDo(id="a", action=42),  # type: ignore[arg-type]
            Reason.UNKNOWN_ACTION,
            "todos[0].action",
            "unknown action type 42",
        ),
        (
            todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CLICK, custom_action="x"),
            Reason.INVALID_FIELD,
            "todos[0].custom_action",
            "only allowed with ACTION_TYPE_CUSTOM",
        ),
        (
            todo_pb2.ToDo(
                id="a", action=todo_pb2.ACTION_TYPE_CLICK, selector=todo_pb2.Selector(value="#b")
            ),
            Reason.INVALID_FIELD,
            "todos[0].selector.strategy",
            "css, xpath, text, role",
        ),
        (
            todo_pb2.ToDo(
                id="a",
                action=todo_pb2.ACTION_TYPE_CLICK,
                selector=todo_pb2.Selector(strategy=todo_pb2.SELECTOR_STRATEGY_CSS),
            ),
            Reason.MISSING_FIELD,
            "todos[0].selector.value",
            "selector value is empty",
        ),
        (
            todo_pb2.ToDo(
                id="a",
                action=todo_pb2.ACTION_TYPE_CLICK,
                retry_policy=todo_pb2.RetryPolicy(max_attempts=0),
            ),
            Reason.INVALID_RETRY_POLICY,
            "todos[0].retry_policy.max_attempts",
            "max_attempts must be between 1 and 100, got 0",
        ),
        (
            todo_pb2.ToDo(
                id="a",
                action=todo_pb2.ACTION_TYPE_CLICK,
                retry_policy=todo_pb2.RetryPolicy(jitter=1.5),
            ),
            Reason.INVALID_RETRY_POLICY,
            "todos[0].retry_policy.jitter",
            "jitter must be between 0 and 1, got 1.5",
        ),
        (
            todo_pb2.ToDo(
                id="a",
                action=todo_pb2.ACTION_TYPE_CLICK,
                timeout=duration_pb2.Duration(seconds=-1),
            ),
            Reason.INVALID_FIELD,
            "todos[0].timeout",
            "timeout must be positive",
        ),
        (
            todo_pb2.ToDo(id="", action=todo_pb2.ACTION_TYPE_CLICK),
            Reason.MISSING_FIELD,
            "todos[0].id",
            "task id is required",
        ),
    ],
)
def test_bad_todo_names_reason_and_field(
    message: todo_pb2.ToDo, reason: Reason, field: str, message_part: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert.todos_from_proto([message])
    assert caught.value.reason is reason
    assert caught.value.field == field
    assert message_part in caught.value.message


def _with_inputs(**inputs: todo_pb2.OutputReference) -> todo_pb2.ToDo:
    return todo_pb2.ToDo(id="b", action=todo_pb2.ACTION_TYPE_CLICK, inputs=inputs)


@pytest.mark.parametrize(
    ("message", "reason", "field", "message_part"),
    [
        (
            _with_inputs(report=todo_pb2.OutputReference(task_id="a", artifact_name="../x")),
            Reason.INVALID_FIELD,
            "todos[0].inputs[report].artifact_name",
            "artifact name '../x' must be",
        ),
        (
            _with_inputs(report=todo_pb2.OutputReference(task_id="a")),
            Reason.MISSING_FIELD,
            "todos[0].inputs[report].output_key",
            "input 'report' names no output_key",
        ),
        (
            _with_inputs(report=todo_pb2.OutputReference(output_key="x")),
            Reason.MISSING_FIELD,
            "todos[0].inputs[report].task_id",
            "input 'report' names no task",
        ),
        (
            _with_inputs(**{"bad name": todo_pb2.OutputReference(task_id="a", output_key="x")}),
            Reason.INVALID_FIELD,
            "todos[0].inputs[bad name]",
            "input name 'bad name' must be",
        ),
    ],
    ids=["artifact", "no output_key", "no task_id", "bad name"],
)
def test_bad_input_names_reason_and_field(
    message: todo_pb2.ToDo, reason: Reason, field: str, message_part: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert.todos_from_proto([message])
    assert caught.value.reason is reason
    assert caught.value.field == field
    assert message_part in caught.value.message


def test_artifact_input_round_trips() -> None:
    message = todo_pb2.ToDo(
        id="b",
        action=todo_pb2.ACTION_TYPE_SEND_MAIL,
        depends_on=["a"],
        inputs={"pdf": todo_pb2.OutputReference(task_id="a", artifact_name="invoice.pdf")},
    )
    todo = convert.todo_from_proto(message)
    assert todo.inputs["pdf"] == OutputRef(task_id="a", artifact_name="invoice.pdf")
    assert convert.todo_to_proto(todo).inputs["pdf"].WhichOneof("target") == "artifact_name"


def test_assignment_carries_the_resolved_inputs() -> None:
    todo = ToDo(id="b", action="echo", inputs={"v": OutputRef(task_id="a", output_key="x")})
    message = AssignmentMessage(
        tenant="t",
        job_id="job-1",
        todo=todo,
        attempt=1,
        deadline=datetime(2030, 1, 1, tzinfo=UTC),
        inputs={"v": {"deep": [1, "two"]}},
    )
    assignment = convert.outbound_to_proto(message).assignment
    assert proto_values.struct_to_dict(assignment.inputs, "inputs") == {"v": {"deep": [1.0, "two"]}}
    assert convert.todo_from_proto(assignment.todo) == todo

    without = AssignmentMessage(tenant="t", job_id="job-1", todo=todo, attempt=1, deadline=None)
    assert not convert.outbound_to_proto(without).assignment.HasField("inputs")


def test_second_todo_is_blamed_by_index() -> None:
    good = todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CLICK)
    bad = todo_pb2.ToDo(id="b")
    with pytest.raises(InvalidArgument) as caught:
        convert.todos_from_proto([good, bad], "spec.todos.todos")
    assert caught.value.field == "spec.todos.todos[1].action"


def test_params_survive_as_json_values() -> None:
    message = todo_pb2.ToDo(
        id="a", action=todo_pb2.ACTION_TYPE_SEND_MAIL, params=_params(to=["x@example.com"], n=3)
    )
    todo = convert.todo_from_proto(message)
    assert todo.params == {"to": ["x@example.com"], "n": 3.0}


def test_preview_lists_todos_in_order_with_batches() -> None:
    from cpa_scheduler.planning import (
        Planner,
        RuleIntentRouter,
        TextRequest,
        load_default_catalog,
    )

    planner = Planner(RuleIntentRouter(load_default_catalog()), max_tasks=50)
    text = "Download the invoice 42 from the portal and mail it to a@b.de"
    preview = convert.plan_to_preview_proto(planner.plan(TextRequest(text)))
    assert preview.intent == "portal_download_and_mail"
    order = [t.id for t in preview.todos]
    assert order == ["login", "download", "send"]
    assert [list(b.task_ids) for b in preview.batches] == [["login"], ["download"], ["send"]]
    assert proto_values.struct_to_dict(preview.parameters, "parameters")["document"] == "invoice 42"
    unknown_plan = planner.plan(TextRequest("downlod invoice from portal"))
    unknown = convert.plan_to_preview_proto(unknown_plan)
    assert (unknown.intent, len(unknown.todos)) == ("unknown", 0)
    assert unknown.candidates[0].intent == "portal_download_and_mail"


@pytest.mark.parametrize(
    "moment",
    [
        "2026-11-26T07:04:44.123456+00:00",
        "1969-12-31T23:59:59.500000+00:00",
        "2026-01-01T01:00:00+01:00",
    ],
)
def test_timestamps_keep_the_instant_to_the_microsecond(moment: str) -> None:
    from datetime import UTC, datetime

    value = datetime.fromisoformat(moment)
    assert proto_values.timestamp(value).ToDatetime(tzinfo=UTC) == value


# -- U+0000 in what an agent reports (PostgreSQL's text cannot hold it) ------------------------


def _result(**fields: Any) -> Any:
    from cpa.executor.v1 import executor_service_pb2 as ex

    return ex.Result(job_id="j", task_id="t", attempt=1, **fields)


def test_outputs_with_nul_fail_the_attempt_naming_the_member() -> None:
    for outputs, field in (({"x": "a\x00"}, "result.outputs.x"), ({"a\x00": 1}, "result.outputs")):
        _, report = convert.result_from_proto(
            _result(outputs=_params(**outputs)), details_max_bytes=16_384
        )
        assert report.error is not None
        assert report.error.code == convert.INVALID_OUTPUT_CODE
        assert f"{field}: " in report.error.message


def test_an_error_with_nul_is_kept_with_u_fffd_and_its_details_dropped() -> None:
    error = error_pb2.TaskError(code="E\x00", message="m\x00m", details=_params(x="\x00"))
    _, report = convert.result_from_proto(_result(error=error), details_max_bytes=16_384)
    assert report.error is not None
    assert (report.error.code, report.error.message) == ("E\ufffd", "m\ufffdm")
    assert report.error.details is not None
    assert list(report.error.details) == [convert.DETAILS_DROPPED_KEY]
    assert "error.details.x" in report.error.details[convert.DETAILS_DROPPED_KEY]


def test_a_progress_message_with_nul_is_kept_with_u_fffd() -> None:
    from cpa.executor.v1 import executor_service_pb2 as ex

    _, _, message = convert.progress_from_proto(ex.Progress(job_id="j", message="a\x00b"))
    assert message == "a\ufffdb"


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        ({"name": "n\x00"}, "hello.name"),
        ({"version": "\x00"}, "hello.version"),
        ({"resume_session_id": "\x00"}, "hello.resume_session_id"),
    ],
)
def test_a_hello_with_nul_is_refused_naming_the_field(spoil: dict[str, Any], field: str) -> None:
    from cpa.common.v1 import agent_capabilities_pb2
    from cpa.executor.v1 import executor_service_pb2 as ex

    hello = ex.Hello(
        agent_id="a", capabilities=agent_capabilities_pb2.AgentCapabilities(slots=1), **spoil
    )
    with pytest.raises(InvalidArgument) as caught:
        convert.profile_from_hello(hello, default_tenant="default")
    assert caught.value.field == field
