"""Values callers send in well-known types: checked so that every reply carrying them decodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from cpa.executor.v1 import executor_service_pb2
from cpa.lam.v1 import lam_message_pb2
from cpa.scheduler.v1 import job_event_pb2, job_pb2, scheduler_service_pb2
from cpa_scheduler.api.proto_values import (
    MAX_JSON_DEPTH,
    check_message,
    check_text,
    duration_s,
    struct_to_dict,
    time_from_proto,
)
from cpa_scheduler.domain import InvalidArgument, Reason

# Levels of objects kept free below protobuf's decode limit in the deepest reply.
MARGIN = 4


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def _struct(depth: int) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(_nested(depth))
    return struct


def _in_batch_answer(struct: struct_pb2.Struct) -> Message:
    response = scheduler_service_pb2.BatchScheduleJobsResponse()
    response.responses.add().job.tasks.add().todo.params.MergeFrom(struct)
    return response


def _in_list_page(struct: struct_pb2.Struct) -> Message:
    response = scheduler_service_pb2.ListJobsResponse()
    response.jobs.add().spec.intent.parameters.MergeFrom(struct)
    return response


def _in_assignment_batch(struct: struct_pb2.Struct) -> Message:
    response = executor_service_pb2.ConnectResponse()
    response.batch.responses.add().assignment.todo.params.MergeFrom(struct)
    return response


def _in_watch_event(struct: struct_pb2.Struct) -> Message:
    response = scheduler_service_pb2.WatchJobResponse(event=job_event_pb2.JobEvent())
    response.event.task_state_changed.outputs.MergeFrom(struct)
    return response


# Every reply that carries a caller's (or an agent's) JSON, at its deepest place.
REPLIES: dict[str, Callable[[struct_pb2.Struct], Message]] = {
    "BatchScheduleJobsResponse.responses.job.tasks.todo.params": _in_batch_answer,
    "ListJobsResponse.jobs.spec.intent.parameters": _in_list_page,
    "ConnectResponse.batch.responses.assignment.todo.params": _in_assignment_batch,
    "WatchJobResponse.event.task_state_changed.outputs": _in_watch_event,
}


def _decodes(build: Callable[[struct_pb2.Struct], Message], depth: int) -> bool:
    """Whether a reply carrying JSON `depth` objects deep survives encode and decode."""
    try:
        struct = _struct(depth)
        reply = build(struct)
        type(reply).FromString(reply.SerializeToString())
    except (DecodeError, RecursionError):
        return False
    return True


@pytest.mark.parametrize("where", list(REPLIES))
def test_the_depth_limit_keeps_a_margin_below_protobufs_decode_limit(where: str) -> None:
    build = REPLIES[where]
    deepest = max(d for d in range(1, 60) if _decodes(build, d))
    # The real number, found: the limit stays MARGIN levels of objects below it.
    assert deepest >= MAX_JSON_DEPTH + MARGIN, (where, deepest)
    assert _decodes(build, MAX_JSON_DEPTH)


def test_objects_and_arrays_count_alike_and_the_limit_itself_is_accepted() -> None:
    assert struct_to_dict(_struct(MAX_JSON_DEPTH), "p")["k"]["k"]
    with pytest.raises(InvalidArgument) as caught:
        struct_to_dict(_struct(MAX_JSON_DEPTH + 1), "p")
    assert caught.value.reason is Reason.NESTING_TOO_DEEP
    assert caught.value.field == "p" + ".k" * MAX_JSON_DEPTH
    arrays = struct_pb2.Struct()
    value: Any = 1
    for _ in range(MAX_JSON_DEPTH):  # the top object plus MAX_JSON_DEPTH arrays: one too many
        value = [value]
    arrays.update({"a": value})
    with pytest.raises(InvalidArgument) as caught:
        struct_to_dict(arrays, "p")
    assert caught.value.reason is Reason.NESTING_TOO_DEEP
    assert caught.value.field.startswith("p.a[0][0]")


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_with_their_path(number: float) -> None:
    struct = struct_pb2.Struct()
    struct.update({"a": [{"b": 1}]})
    struct.fields["a"].list_value.values[0].struct_value.fields["b"].number_value = number
    with pytest.raises(InvalidArgument) as caught:
        struct_to_dict(struct, "spec.context")
    assert caught.value.reason is Reason.INVALID_FIELD
    assert caught.value.field == "spec.context.a[0].b"


def test_values_come_back_as_json_does() -> None:
    struct = struct_pb2.Struct()
    struct.update({"n": 1, "s": "x", "b": True, "z": None, "l": [1, {"o": []}]})
    assert struct_to_dict(struct, "p") == {
        "n": 1.0,
        "s": "x",
        "b": True,
        "z": None,
        "l": [1.0, {"o": []}],
    }


@pytest.mark.parametrize(
    ("seconds", "nanos", "bad"),
    [
        (2**62, 0, "seconds"),
        (-(2**40), 0, "seconds"),
        (253_402_300_800, 0, "seconds"),
        (0, 2_000_000_000, "nanos"),
        (0, -1, "nanos"),
    ],
)
def test_timestamps_out_of_range_name_the_part(seconds: int, nanos: int, bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        time_from_proto(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos), "spec.deadline")
    assert caught.value.field == f"spec.deadline.{bad}"


def test_the_ends_of_the_timestamp_range_are_accepted() -> None:
    assert time_from_proto(timestamp_pb2.Timestamp(seconds=253_402_300_799), "t").year == 9999
    assert time_from_proto(timestamp_pb2.Timestamp(seconds=-62_135_596_800), "t").year == 1


@pytest.mark.parametrize(
    ("seconds", "nanos", "bad"),
    [(2**62, 0, "seconds"), (0, 1_000_000_000, "nanos"), (5, -1, "nanos"), (-5, 1, "nanos")],
)
def test_durations_out_of_range_name_the_part(seconds: int, nanos: int, bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        duration_s(duration_pb2.Duration(seconds=seconds, nanos=nanos), "timeout")
    assert caught.value.field == f"timeout.{bad}"
    assert duration_s(duration_pb2.Duration(seconds=-5, nanos=-1), "t") == pytest.approx(-5.0)


def test_check_message_finds_bad_values_anywhere_in_a_lam_message() -> None:
    message = lam_message_pb2.LamMessage(id="m", sender="agent://a")
    message.payload.update({"ok": 1})
    check_message(message, "")
    message.request.todos.add().params.fields["x"].number_value = float("nan")
    with pytest.raises(InvalidArgument) as caught:
        check_message(message, "")
    assert caught.value.field == "request.todos[0].params.x"
    message.ClearField("request")
    message.ts.seconds = 2**62
    with pytest.raises(InvalidArgument) as caught:
        check_message(message, "")
    assert caught.value.field == "ts.seconds"


def test_a_job_view_enum_outside_the_contract_is_refused() -> None:
    from cpa_scheduler.api.job_views import is_full_view

    assert is_full_view(job_pb2.JOB_VIEW_UNSPECIFIED, default_full=True)
    assert not is_full_view(job_pb2.JOB_VIEW_BASIC, default_full=True)
    with pytest.raises(InvalidArgument) as caught:
        is_full_view(7, default_full=False)  # type: ignore[arg-type]
    assert caught.value.field == "view"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"a": "x\x00"}, "p.a"),
        ({"a": [1, {"b": "\x00"}]}, "p.a[1].b"),
        ({"a\x00": 1}, "p"),
        ({"a": {"\x00": None}}, "p.a"),
    ],
)
def test_nul_in_a_json_string_or_key_is_refused_with_its_path(
    content: dict[str, Any], field: str
) -> None:
    # PostgreSQL's text and jsonb cannot hold U+0000 (jsonb not even as the \u0000 escape).
    # check_text leaves JSON values to struct_to_dict, which every request's Struct goes through.
    struct = struct_pb2.Struct()
    struct.update(content)
    with pytest.raises(InvalidArgument) as caught:
        struct_to_dict(struct, "p")
    assert caught.value.reason is Reason.INVALID_FIELD
    assert caught.value.field == field


def test_other_odd_code_points_are_kept() -> None:
    odd = "\x01\x7f\u200b\u202e\ufeff\ufffe\uffff\U0010ffff\U0001f4a9"
    struct = struct_pb2.Struct()
    struct.update({odd: odd})
    assert struct_to_dict(struct, "p") == {odd: odd}
    check_text(job_pb2.JobSpec(text=odd, context=struct))


def test_check_text_names_the_field_holding_nul_anywhere_in_a_request() -> None:
    spec = job_pb2.JobSpec()
    spec.todos.todos.add(id="a").params.update({"x": [1, "ok"]})
    request = scheduler_service_pb2.ScheduleJobRequest(request_id="r", spec=spec)
    check_text(request)
    cases: list[tuple[Callable[[scheduler_service_pb2.ScheduleJobRequest], None], str]] = [
        (lambda r: setattr(r.spec, "text", "a\x00"), "spec.text"),
        (
            lambda r: r.spec.todos.todos[0].depends_on.append("\x00"),
            "spec.todos.todos[0].depends_on[0]",
        ),
        (lambda r: r.spec.labels.update({"k": "\x00"}), "spec.labels[k]"),
        (lambda r: r.spec.labels.update({"\x00": "v"}), "spec.labels"),
        (
            lambda r: r.spec.todos.todos[0].inputs["in"].__setattr__("task_id", "\x00"),
            "spec.todos.todos[0].inputs[in].task_id",
        ),
    ]
    # A JSON value's text is struct_to_dict's to refuse (above), not check_text's.
    json_spoiled = scheduler_service_pb2.ScheduleJobRequest()
    json_spoiled.CopyFrom(request)
    json_spoiled.spec.todos.todos[0].params.fields["x"].list_value.values[1].string_value = "\x00"
    check_text(json_spoiled)
    for spoil, field in cases:
        spoiled = scheduler_service_pb2.ScheduleJobRequest()
        spoiled.CopyFrom(request)
        spoil(spoiled)
        with pytest.raises(InvalidArgument) as caught:
            check_text(spoiled)
        assert (caught.value.reason, caught.value.field) == (Reason.INVALID_FIELD, field)
