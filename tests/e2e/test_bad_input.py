"""Bad input gets the right status, reason and field; the server keeps serving afterwards."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.api.proto_values import MAX_JSON_DEPTH

from .conftest import Agents, Scheduler, finished, todo, todos_spec
from .raw_agent import RawAgentStream

Call = Callable[[SchedulerClient], Awaitable[Any]]


def _schedule(spec: job_pb2.JobSpec, request_id: str = "") -> Call:
    return lambda client: client.schedule_job(spec, request_id=request_id)


def _request(request_id: str, *todos: todo_pb2.ToDo) -> scheduler_service_pb2.ScheduleJobRequest:
    return scheduler_service_pb2.ScheduleJobRequest(request_id=request_id, spec=todos_spec(*todos))


def _batch(*requests: scheduler_service_pb2.ScheduleJobRequest | job_pb2.JobSpec) -> Call:
    return lambda client: client.batch_schedule_jobs(requests)


def _input(
    task_id: str, output_key: str = "", *, artifact_name: str = "", name: str = "report"
) -> dict[str, todo_pb2.OutputReference]:
    """One input, `name`, taking `output_key` (or `artifact_name`) of `task_id`."""
    reference = todo_pb2.OutputReference(task_id=task_id)
    if output_key:
        reference.output_key = output_key
    if artifact_name:
        reference.artifact_name = artifact_name
    return {name: reference}


def _nested(depth: int) -> dict[str, Any]:
    """A JSON object `depth` objects deep: {"k": {"k": ... {"leaf": 1}}}."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def _params_todo(value: float) -> todo_pb2.ToDo:
    message = todo("a", "noop")
    message.params.fields["ratio"].number_value = value
    return message


def _deadline(seconds: int, nanos: int = 0) -> job_pb2.JobSpec:
    spec = todos_spec(todo("a", "noop"))
    spec.deadline.seconds, spec.deadline.nanos = seconds, nanos
    return spec


def _timeout(seconds: int, nanos: int = 0) -> job_pb2.JobSpec:
    message = todo("a", "noop")
    message.timeout.seconds, message.timeout.nanos = seconds, nanos
    return todos_spec(message)


def _nan_context() -> job_pb2.JobSpec:
    spec = todos_spec(todo("a", "noop"))
    spec.context.fields["n"].list_value.values.add().number_value = float("nan")
    return spec


def _deep_intent() -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(intent=job_pb2.IntentInvocation(name="send_mail"))
    spec.intent.parameters.update(_nested(MAX_JSON_DEPTH + 1))
    return spec


CASES: list[tuple[str, Call, grpc.StatusCode, str, str]] = [
    (
        "empty job",
        _schedule(job_pb2.JobSpec(todos=job_pb2.TodoList())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "EMPTY_GRAPH",
        "spec.todos.todos",
    ),
    (
        "no work at all",
        _schedule(job_pb2.JobSpec()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_FIELD",
        "spec.source",
    ),
    (
        "unknown action",
        _schedule(todos_spec(todo("a", "Not An Action"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_ACTION",
        "spec.todos.todos[0].custom_action",
    ),
    (
        "cyclic graph",
        _schedule(
            todos_spec(todo("a", "noop", depends_on=["b"]), todo("b", "noop", depends_on=["a"]))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "GRAPH_CYCLE",
        "spec.todos.todos[1].depends_on[0]",
    ),
    (
        "unknown dependency",
        _schedule(todos_spec(todo("a", "noop", depends_on=["ghost"]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_DEPENDENCY",
        "spec.todos.todos[0].depends_on[0]",
    ),
    (
        "input from an unknown task",
        _schedule(
            todos_spec(
                todo("a", "echo"),
                todo("b", "echo", depends_on=["a"], inputs=_input("ghost", output_key="x")),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_DEPENDENCY",
        "spec.todos.todos[1].inputs[report].task_id",
    ),
    (
        "input from a task that is not upstream",
        _schedule(
            todos_spec(
                todo("a", "echo"),
                todo("side", "echo", depends_on=["a"]),
                todo("b", "echo", depends_on=["a"], inputs=_input("side", output_key="x")),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[2].inputs[report].task_id",
    ),
    (
        "input without task id",
        _schedule(todos_spec(todo("b", "echo", inputs=_input("", output_key="x")))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_FIELD",
        "spec.todos.todos[0].inputs[report].task_id",
    ),
    (
        "input without output key",
        _schedule(
            todos_spec(todo("a", "echo"), todo("b", "echo", depends_on=["a"], inputs=_input("a")))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_FIELD",
        "spec.todos.todos[1].inputs[report].output_key",
    ),
    (
        "input from an artifact with a path for a name",
        _schedule(
            todos_spec(
                todo("a", "echo"),
                todo("b", "echo", depends_on=["a"], inputs=_input("a", artifact_name="../pdf")),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[1].inputs[report].artifact_name",
    ),
    (
        "bad input name",
        _schedule(
            todos_spec(
                todo("a", "echo"),
                todo("b", "echo", depends_on=["a"], inputs=_input("a", "x", name="2nd report")),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[1].inputs[2nd report]",
    ),
    (
        "credential purpose not a name",
        _schedule(todos_spec(todo("a", "noop", credential_refs={"the portal": "env:P"}))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].credential_refs[the portal]",
    ),
    (
        "credential without a reference",
        _schedule(todos_spec(todo("a", "noop", credential_refs={"portal": ""}))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_FIELD",
        "spec.todos.todos[0].credential_refs[portal]",
    ),
    (
        "credential reference too long",
        _schedule(todos_spec(todo("a", "noop", credential_refs={"portal": "é" * 513}))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].credential_refs[portal]",
    ),
    (
        "credential reference with a newline",
        _schedule(todos_spec(todo("a", "noop", credential_refs={"portal": "env:P\nX"}))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].credential_refs[portal]",
    ),
    (
        "too many credentials",
        _schedule(
            todos_spec(todo("a", "noop", credential_refs={f"p{i}": f"env:P{i}" for i in range(33)}))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].credential_refs",
    ),
    (
        "duplicate task id",
        _schedule(todos_spec(todo("a", "noop"), todo("a", "echo"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DUPLICATE_TASK_ID",
        "spec.todos.todos[1].id",
    ),
    (
        "oversized payload",
        _schedule(todos_spec(todo("a", "echo", params={"blob": "x" * 300_000}))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PAYLOAD_TOO_LARGE",
        "",
    ),
    (
        "text no intent matches",
        _schedule(job_pb2.JobSpec(text="water the plants")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_INTENT",
        "spec.text",
    ),
    (
        "unknown intent name",
        _schedule(job_pb2.JobSpec(intent=job_pb2.IntentInvocation(name="send_mial"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_INTENT",
        "spec.intent.name",
    ),
    (
        "unknown job id",
        lambda client: client.get_job("no-such-job"),
        grpc.StatusCode.NOT_FOUND,
        "JOB_NOT_FOUND",
        "job_id",
    ),
    (
        "missing job id",
        lambda client: client.get_job(""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_FIELD",
        "job_id",
    ),
    (
        "cancel unknown job",
        lambda client: client.cancel_job("no-such-job"),
        grpc.StatusCode.NOT_FOUND,
        "JOB_NOT_FOUND",
        "job_id",
    ),
    (
        "bad list filter",
        lambda client: anext(client.list_jobs(filter="stat = FAILED")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FILTER",
        "filter",
    ),
    (
        "batch of no requests",
        _batch(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_FIELD",
        "requests",
    ),
    (
        "batch of too many requests",
        _batch(*[todos_spec(todo("a", "noop"))] * 1001),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "requests",
    ),
    (
        "batch with a bad request",
        _batch(
            todos_spec(todo("a", "noop")),
            todos_spec(todo("a", "noop", depends_on=["b"]), todo("b", "noop", depends_on=["a"])),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "GRAPH_CYCLE",
        "requests[1].spec.todos.todos[1].depends_on[0]",
    ),
    (
        "batch with a request without spec",
        _batch(scheduler_service_pb2.ScheduleJobRequest(request_id="r")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_FIELD",
        "requests[0].spec",
    ),
    (
        "batch with text that matches no intent",
        _batch(todos_spec(todo("a", "noop")), job_pb2.JobSpec(text="zzz qqq xxx")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_INTENT",
        "requests[1].spec.text",
    ),
    (
        "batch repeating a request id",
        _batch(*(_request("r-1", todo("a", "noop")), _request("r-1", todo("a", "noop")))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "requests[1].request_id",
    ),
    (
        "oversized batch",
        _batch(*[todos_spec(todo("a", "echo", params={"blob": "x" * 100_000}))] * 3),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PAYLOAD_TOO_LARGE",
        "",
    ),
    (
        "NaN in params",
        _schedule(todos_spec(_params_todo(float("nan")))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].params.ratio",
    ),
    (
        "Infinity in params",
        _schedule(todos_spec(_params_todo(float("inf")))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].params.ratio",
    ),
    (
        "-Infinity in params",
        _schedule(todos_spec(_params_todo(float("-inf")))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].params.ratio",
    ),
    (
        "NaN in a list in the context",
        _schedule(_nan_context()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.context.n[0]",
    ),
    (
        "NaN in a batch request",
        _batch(todos_spec(todo("a", "noop")), todos_spec(_params_todo(float("nan")))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "requests[1].spec.todos.todos[0].params.ratio",
    ),
    (
        "NaN in a plan preview",
        lambda client: client.preview_plan(todos_spec(_params_todo(float("nan")))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].params.ratio",
    ),
    (
        "deadline seconds 2^62",
        _schedule(_deadline(2**62)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.deadline.seconds",
    ),
    (
        "deadline nanos 2e9",
        _schedule(_deadline(2_000_000_000, 2_000_000_000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.deadline.nanos",
    ),
    (
        "deadline before year 1",
        _schedule(_deadline(-(2**40))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.deadline.seconds",
    ),
    (
        "task timeout of 2^62 seconds",
        _schedule(_timeout(2**62)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].timeout.seconds",
    ),
    (
        "task timeout nanos of the wrong sign",
        _schedule(_timeout(5, -1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].timeout.nanos",
    ),
    (
        "retry backoff out of range",
        _schedule(
            todos_spec(
                todo(
                    "a",
                    "noop",
                    retry_policy=todo_pb2.RetryPolicy(
                        initial_backoff=duration_pb2.Duration(seconds=-(2**62))
                    ),
                )
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].retry_policy.initial_backoff.seconds",
    ),
    (
        "params nested one level too deep",
        _schedule(todos_spec(todo("a", "noop", params=_nested(MAX_JSON_DEPTH + 1)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NESTING_TOO_DEEP",
        "spec.todos.todos[0].params" + ".k" * MAX_JSON_DEPTH,
    ),
    (
        "intent parameters nested too deep",
        _schedule(_deep_intent()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NESTING_TOO_DEEP",
        "spec.intent.parameters" + ".k" * MAX_JSON_DEPTH,
    ),
    (
        "task id with a trailing newline",
        _schedule(todos_spec(todo("a\n", "noop"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[0].id",
    ),
    (
        "custom action with a trailing newline",
        _schedule(todos_spec(todo("a", "my_action\n"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_ACTION",
        "spec.todos.todos[0].custom_action",
    ),
    (
        "input name with a trailing newline",
        _schedule(
            todos_spec(
                todo("a", "noop"),
                todo("b", "noop", depends_on=["a"], inputs=_input("a", "k", name="report\n")),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.todos.todos[1].inputs[report\n]",
    ),
    (
        "bad page token",
        lambda client: client._stub.ListJobs(
            scheduler_service_pb2.ListJobsRequest(page_token="garbage")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        "page_token",
    ),
]


@pytest.mark.parametrize(
    ("call", "code", "reason", "field"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bad_input_is_refused_with_code_reason_and_field(
    client: SchedulerClient, call: Call, code: grpc.StatusCode, reason: str, field: str
) -> None:
    with pytest.raises((CpaError, grpc.aio.AioRpcError)) as caught:
        await call(client)
    error = caught.value
    if isinstance(error, grpc.aio.AioRpcError):
        error = CpaError.from_rpc_error(error)
    assert isinstance(error, CpaError)
    assert (error.code, error.reason) == (code, reason), error.message
    assert error.metadata.get("field", "") == field
    if field and code == grpc.StatusCode.INVALID_ARGUMENT:
        assert [v.field for v in error.field_violations] == [field]
    # The server keeps serving: a normal call right after works.
    preview = await client.preview_plan(todos_spec(todo("ok", "noop")))
    assert [t.id for t in preview.todos] == ["ok"]


async def test_illegal_transitions_are_failed_precondition(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    job_id = (await client.schedule_job(todos_spec(todo("a", "noop")))).job.job_id
    done = await finished(client, job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    for action in (client.cancel_job, client.retry_job):
        with pytest.raises(CpaError) as caught:
            await action(job_id)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.reason == "ILLEGAL_TRANSITION"
        assert "job cannot go from SUCCEEDED" in caught.value.message


async def test_reused_request_id_returns_the_same_job_or_refuses_a_different_request(
    client: SchedulerClient,
) -> None:
    spec = todos_spec(todo("a", "noop"))
    first = await client.schedule_job(spec, request_id="req-1")
    again = await client.schedule_job(spec, request_id="req-1")
    assert (first.created, again.created) == (True, False)
    assert again.job.job_id == first.job.job_id
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(todos_spec(todo("b", "noop")), request_id="req-1")
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.reason == "REQUEST_ID_REUSED"


@pytest.mark.parametrize(
    ("outputs", "reason", "where"),
    [
        ({"ratio": float("nan")}, "INVALID_FIELD", "result.outputs.ratio"),
        (_nested(MAX_JSON_DEPTH + 1), "NESTING_TOO_DEEP", "result.outputs.k.k"),
    ],
    ids=["nan", "too-deep"],
)
async def test_agent_outputs_that_cannot_be_stored_fail_the_attempt_for_good(
    client: SchedulerClient,
    raw_stream: RawAgentStream,
    outputs: dict[str, Any],
    reason: str,
    where: str,
) -> None:
    """Before: the report failed with an exception, was never acked, and the agent sent it again
    after every reconnect while the job stayed RUNNING."""
    await raw_stream.hello("raw", actions=("noop",))
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    job_id = (await client.schedule_job(todos_spec(todo("a", "noop")))).job.job_id
    assignment = (await raw_stream.read_until("assignment")).assignment
    result = ex.Result(job_id=job_id, task_id="a", attempt=assignment.attempt)
    if reason == "INVALID_FIELD":
        result.outputs.fields["ratio"].number_value = outputs["ratio"]
    else:
        result.outputs.update(outputs)
    raw_stream.send(ex.ConnectRequest(report_id=1, result=result))

    ack = (await raw_stream.read_until("report_ack")).report_ack
    assert (ack.report_id, ack.accepted) == (1, True)  # stored as the attempt's failure
    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    error = job.tasks[0].error
    assert error.code == "INVALID_OUTPUT"
    assert error_pb2.ErrorReason.Name(error.reason) == f"ERROR_REASON_{reason}"
    assert where in error.message
    assert not error.retryable


def _too_deep_to_decode() -> bytes:
    """A ScheduleJobRequest whose params nest past protobuf's 100-level decode limit."""
    request = scheduler_service_pb2.ScheduleJobRequest()
    request.spec.todos.todos.add().params.update(_nested(40))
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("ScheduleJob", _too_deep_to_decode()),
        ("GetJob", b"\x0a\x64"),  # a field claiming 100 bytes that are not there
        ("WatchJob", b"\xff\xff\xff"),
    ],
    ids=["too-deep", "truncated", "garbage-stream"],
)
async def test_an_undecodable_request_is_invalid_argument(
    scheduler: Scheduler, client: SchedulerClient, method: str, body: bytes
) -> None:
    """Before: gRPC's own decoding answered UNKNOWN ("Unexpected DecodeError") with a logged
    traceback per call."""
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        path = f"/cpa.scheduler.v1.SchedulerService/{method}"
        if method == "WatchJob":
            call: Any = channel.unary_stream(path, None, None)(body)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
        else:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(path, None, None)(body)
    error = CpaError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE")
    # The server keeps serving.
    assert (await client.preview_plan(todos_spec(todo("ok", "noop")))).todos[0].id == "ok"
