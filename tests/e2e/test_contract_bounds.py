"""Bounds the contract states on what callers and agents name (issue 15's review), each pinned
over real gRPC: ids of at most 128 characters everywhere, labels and capability names bounded
as one rule, a passed deadline refused by ScheduleJob as by a LAM request, a Progress percent
within 0..100 and its message clipped."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from cpa.common.v1 import agent_capabilities_pb2, error_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2
from cpa_agent import Agent, AgentSettings
from cpa_agent.connection import HelloRefusedError
from cpa_agent.executors import builtin_registry
from cpa_client import CpaError, SchedulerClient

from .conftest import EVENT_TIMEOUT_S, Scheduler, first_event, todo, todos_spec
from .raw_agent import RawAgentStream

LONG_ID = "x" * 129


async def _refused(call: object) -> CpaError:
    with pytest.raises(CpaError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def _invalid(error: CpaError) -> tuple[grpc.StatusCode, str, list[str]]:
    return error.code, error.reason, [v.field for v in error.field_violations]


async def test_ids_over_128_characters_are_refused_naming_the_field(
    client: SchedulerClient,
) -> None:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    error = await _refused(client.schedule_job(todos_spec(todo("a", "noop")), request_id=LONG_ID))
    assert _invalid(error) == (bad, "INVALID_FIELD", ["request_id"])

    request = scheduler_service_pb2.ScheduleJobRequest(
        request_id=LONG_ID, spec=todos_spec(todo("a", "noop"))
    )
    error = await _refused(client.batch_schedule_jobs([request]))
    assert _invalid(error) == (bad, "INVALID_FIELD", ["requests[0].request_id"])

    # WatchJob answered NOT_FOUND for such an id before: it is no job id at all.
    with pytest.raises(CpaError) as caught:
        async for _ in client.watch_job(LONG_ID):
            pass
    assert _invalid(caught.value) == (bad, "INVALID_FIELD", ["job_id"])
    # 128 is still an id: looked up, not found.
    with pytest.raises(CpaError) as caught:
        async for _ in client.watch_job("x" * 128):
            pass
    assert caught.value.reason == "JOB_NOT_FOUND"


async def test_ids_with_control_characters_are_refused_before_any_lookup(
    client: SchedulerClient,
) -> None:
    # PostgreSQL's text cannot hold NUL: such an id once reached the store and came back INTERNAL.
    for job_id in ("a\x00b", "a\nb"):
        error = await _refused(client.get_job(job_id))
        assert _invalid(error) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["job_id"])
    error = await _refused(client.schedule_job(todos_spec(todo("a", "noop")), request_id="r\x00"))
    assert _invalid(error) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["request_id"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", LONG_ID),
        ("sender", "agent://a\x00b"),
        ("sender", LONG_ID),
        ("correlation.conversation_id", LONG_ID),
        ("correlation.reply_with", LONG_ID),
        ("correlation.in_reply_to", LONG_ID),
    ],
)
async def test_lam_envelope_ids_over_128_characters_are_not_understood(
    client: SchedulerClient, field: str, value: str
) -> None:
    message = lam.LamMessage(
        id="m-1",
        sender="agent://ops",
        performative=lam.PERFORMATIVE_REQUEST,
        request=lam.RequestBody(text="hello"),
    )
    target = message.correlation if field.startswith("correlation.") else message
    setattr(target, field.removeprefix("correlation."), value)
    reply = await client.send_message(message)
    assert reply.performative == lam.PERFORMATIVE_NOT_UNDERSTOOD
    assert reply.not_understood.reason == error_pb2.ERROR_REASON_MALFORMED_MESSAGE
    assert reply.not_understood.field == field
    assert not [j async for j in client.list_jobs()]


async def test_a_passed_deadline_is_refused_as_by_a_lam_request(client: SchedulerClient) -> None:
    spec = todos_spec(todo("a", "noop"))
    spec.deadline.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    error = await _refused(client.schedule_job(spec))
    assert _invalid(error) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["spec.deadline"])

    message = lam.LamMessage(
        id="m-late",
        sender="agent://ops",
        performative=lam.PERFORMATIVE_REQUEST,
        request=lam.RequestBody(todos=[todo("a", "noop")]),
    )
    message.expected.deadline.CopyFrom(spec.deadline)
    reply = await client.send_message(message)
    assert reply.performative == lam.PERFORMATIVE_REFUSE
    assert reply.refuse.reason == error_pb2.ERROR_REASON_INVALID_FIELD
    assert not [j async for j in client.list_jobs()]


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        ({"Team": "ops"}, "labels[Team]"),
        ({"-team": "ops"}, "labels[-team]"),
        ({"k" * 64: "v"}, f"labels[{'k' * 64}]"),
        ({"team": "v" * 257}, "labels[team]"),
        ({"team": "a\nb"}, "labels[team]"),
        ({f"k{i}": "v" for i in range(65)}, "labels"),
    ],
    ids=["upper-case", "dash-first", "long-key", "long-value", "control-char", "too-many"],
)
async def test_job_labels_and_required_labels_are_bounded_as_one_rule(
    client: SchedulerClient, labels: dict[str, str], field: str
) -> None:
    error = await _refused(client.schedule_job(todos_spec(todo("a", "noop"), labels=labels)))
    assert _invalid(error) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", [f"spec.{field}"])

    error = await _refused(
        client.schedule_job(todos_spec(todo("a", "noop", required_labels=labels)))
    )
    expected = f"spec.todos.todos[0].required_{field}"
    assert _invalid(error) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", [expected])


async def test_labels_within_the_rule_are_kept_and_filterable(client: SchedulerClient) -> None:
    labels = {"cost-center.v2_x": "4711", "9z": "v" * 256, **{f"k{i}": "v" for i in range(62)}}
    job = (await client.schedule_job(todos_spec(todo("a", "noop"), labels=labels))).job
    assert dict(job.spec.labels) == labels
    found = [j.job_id async for j in client.list_jobs(filter='labels.cost-center.v2_x = "4711"')]
    assert found == [job.job_id]


async def test_required_capabilities_are_bounded(client: SchedulerClient) -> None:
    for names in ([f"c{i}" for i in range(257)], [""], ["c" * 129]):
        spec = todos_spec(todo("a", "noop", required_capabilities=names))
        error = await _refused(client.schedule_job(spec))
        assert _invalid(error) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
            ["spec.todos.todos[0].required_capabilities"],
        )


def _hello(**fields: object) -> ex.Hello:
    capabilities = agent_capabilities_pb2.AgentCapabilities(slots=1, actions=["noop"])
    hello = ex.Hello(agent_id="raw", capabilities=capabilities)
    for name, value in fields.items():
        if name in ("actions", "capabilities"):
            getattr(hello.capabilities, name)[:] = value
        elif name == "labels":
            hello.capabilities.labels.update(value)  # type: ignore[call-overload]
        else:
            setattr(hello, name, value)
    return hello


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"agent_id": LONG_ID}, "hello.agent_id"),
        ({"tenant": LONG_ID}, "hello.tenant"),
        ({"name": "n" * 129}, "hello.name"),
        ({"version": "v" * 129}, "hello.version"),
        ({"actions": ["noop"] * 257}, "hello.capabilities.actions"),
        ({"capabilities": ["a\x00b"]}, "hello.capabilities.capabilities"),
        ({"labels": {"Site": "berlin"}}, "hello.capabilities.labels[Site]"),
    ],
    ids=["agent-id", "tenant", "name", "version", "actions", "capability", "label-key"],
)
async def test_a_hello_over_its_bounds_ends_the_stream_naming_the_field(
    raw_stream: RawAgentStream, client: SchedulerClient, fields: dict[str, object], field: str
) -> None:
    raw_stream.send(ex.ConnectRequest(hello=_hello(**fields)))
    error = await raw_stream.refusal()
    assert _invalid(error) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", [field])
    assert not [a async for a in client.list_agents()]


async def test_progress_percent_outside_0_to_100_is_refused_and_its_message_clipped(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw")
    job_id, assignment = await raw_stream.assigned(client, todo("a", "noop"))

    def progress(report_id: int, **fields: object) -> ex.ConnectRequest:
        body = ex.Progress(job_id=job_id, task_id="a", attempt=assignment.attempt, **fields)  # type: ignore[arg-type]
        return ex.ConnectRequest(report_id=report_id, progress=body)

    for report_id, percent in enumerate([-0.5, 100.5, math.nan, math.inf], 1):
        raw_stream.send(progress(report_id, percent=percent, message="bad"))
        ack = (await raw_stream.read_until("report_ack")).report_ack
        assert (ack.report_id, ack.accepted, ack.reason) == (
            report_id,
            False,
            error_pb2.ERROR_REASON_INVALID_FIELD,
        ), percent

    long_message = "h" * 3000 + "m" * 6000 + "t" * 3000
    raw_stream.send(progress(10, percent=100, message=long_message))
    ack = (await raw_stream.read_until("report_ack")).report_ack
    assert (ack.report_id, ack.accepted) == (10, True)
    event = await first_event(client, job_id, lambda e: e.HasField("task_progress"))
    recorded = event.task_progress
    # The refused reports left nothing: the first progress event is the accepted one.
    assert recorded.percent == 100
    assert len(recorded.message.encode()) <= 4096
    assert recorded.message.startswith("h" * 1000)
    assert recorded.message.endswith("t" * 1000)
    assert "chars)" in recorded.message
    job = await client.get_job(job_id)
    assert job.state == job_pb2.JOB_STATE_RUNNING


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"labels": {"Site": "berlin"}}, "hello.capabilities.labels[Site]"),
        ({"agent_id": "a" * 129}, "hello.agent_id"),
    ],
    ids=["label-key", "agent-id"],
)
async def test_an_agent_whose_hello_is_refused_stops_and_says_why(
    scheduler: Scheduler, settings: dict[str, object], field: str
) -> None:
    # A configuration no reconnect can fix: the agent stops instead of retrying for ever.
    agent = Agent(
        settings=AgentSettings(
            server=scheduler.target,
            **{"agent_id": "refused", **settings},  # type: ignore[arg-type]
        ),
        registry=builtin_registry(),
    )
    with pytest.raises(HelloRefusedError) as caught:
        await asyncio.wait_for(agent.async_run(), EVENT_TIMEOUT_S)
    assert "INVALID_ARGUMENT" in str(caught.value)
    assert field in str(caught.value)
