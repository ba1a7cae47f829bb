"""Errors echo caller input only bounded: the client gets the real error, never its own
RESOURCE_EXHAUSTED for trailers over 16 KiB. Each example used to produce such a trailer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from cpa.common.v1 import error_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import scheduler_service_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.api.proto_values import MAX_JSON_DEPTH
from cpa_scheduler.domain import MAX_FIELD_BYTES, MAX_MESSAGE_BYTES
from cpa_scheduler.settings import Settings

from .conftest import HEARTBEAT_S, LEASE_S, todo, todos_spec


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    # The default request limit (4 MiB): room for a 1 MB id.
    return Settings(
        data_dir=tmp_path / "data", lease_duration_s=LEASE_S, heartbeat_interval_s=HEARTBEAT_S
    )


def _bounded(error: CpaError, code: grpc.StatusCode, reason: str, field: str) -> None:
    assert (error.code, error.reason) == (code, reason), error.message[:200]
    assert len(error.message) <= MAX_MESSAGE_BYTES
    assert error.metadata.get("field") == field
    assert all(len(value) <= MAX_FIELD_BYTES for value in error.metadata.values())
    for violation in error.field_violations:
        assert len(violation.field) <= MAX_FIELD_BYTES
        assert len(violation.description) <= MAX_MESSAGE_BYTES


async def test_a_100_kb_task_id_is_refused_with_a_short_message(client: SchedulerClient) -> None:
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(todos_spec(todo("a" * 100_000, "noop")))
    _bounded(
        caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "spec.todos.todos[0].id"
    )
    assert "(100002 chars)" in caught.value.message  # the repr's quotes count


async def test_a_non_ascii_task_id_is_bounded_in_bytes(client: SchedulerClient) -> None:
    # Each "😀" is 4 bytes, 12 once percent-encoded in grpc-message.
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(todos_spec(todo("😀" * 50_000, "noop")))
    _bounded(
        caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "spec.todos.todos[0].id"
    )
    assert len(caught.value.message.encode()) <= MAX_MESSAGE_BYTES


async def test_a_1_mb_job_id_is_refused_with_a_short_message(client: SchedulerClient) -> None:
    job_id = "j" * 1_000_000
    for call in (client.get_job, client.cancel_job, client.retry_job):
        with pytest.raises(CpaError) as caught:
            await call(job_id)
        _bounded(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "job_id")


async def test_a_5000_task_cycle_is_named_by_its_ends_and_length(client: SchedulerClient) -> None:
    count = 5000
    todos = [todo(f"t{i}", "noop", depends_on=[f"t{(i + 1) % count}"]) for i in range(count)]
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(todos_spec(*todos))
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "GRAPH_CYCLE")
    assert error.message.endswith(f" -> ... -> t4997 -> t4998 -> t4999 -> t0 ({count} tasks)")
    assert error.message.startswith("dependency cycle: t0 -> t1 -> t2 -> t3 -> ...")


async def test_a_long_input_name_is_clipped_in_the_field_path(client: SchedulerClient) -> None:
    name = "n" * 100_000
    spec = todos_spec(
        todo("a", "noop"),
        todo("b", "noop", depends_on=["a"]),
    )
    spec.todos.todos[1].inputs[name].task_id = "a"
    spec.todos.todos[1].inputs[name].output_key = "k"
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(spec)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    field = error.metadata["field"]
    assert field.startswith("spec.todos.todos[1].inputs[nnn")
    assert field.endswith("nnn]")
    assert len(field) <= MAX_FIELD_BYTES
    assert [v.field for v in error.field_violations] == [field]


async def test_an_overlong_request_id_is_refused_and_echoed_bounded(
    client: SchedulerClient,
) -> None:
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(todos_spec(todo("a", "noop")), request_id="r" * 500_000)
    _bounded(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "request_id")
    assert not [job async for job in client.list_jobs()]


async def test_a_reused_request_id_is_echoed_bounded(client: SchedulerClient) -> None:
    request_id = "r" * 128
    await client.schedule_job(todos_spec(todo("a", "noop")), request_id=request_id)
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(todos_spec(todo("b", "noop")), request_id=request_id)
    _bounded(caught.value, grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", "request_id")


def _lam_request(**fields: object) -> lam.LamMessage:
    return lam.LamMessage(
        id="m-1",
        sender="agent://caller",
        performative=lam.PERFORMATIVE_REQUEST,
        intent="send_mail",
        **fields,  # type: ignore[arg-type]
    )


async def test_lam_values_that_cannot_be_stored_get_not_understood(
    client: SchedulerClient,
) -> None:
    nan = _lam_request()
    nan.payload.fields["x"].number_value = float("nan")
    deep = _lam_request()
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_JSON_DEPTH):
        value = {"k": value}
    deep.context.update(value)
    late = _lam_request()
    late.ts.seconds = 2**62
    todo_nan = _lam_request()
    todo_nan.request.todos.add(id="a").params.fields["r"].number_value = float("-inf")
    for message, reason, field in (
        (nan, "ERROR_REASON_INVALID_FIELD", "payload.x"),
        (deep, "ERROR_REASON_NESTING_TOO_DEEP", "context" + ".k" * MAX_JSON_DEPTH),
        (late, "ERROR_REASON_INVALID_FIELD", "ts.seconds"),
        (todo_nan, "ERROR_REASON_INVALID_FIELD", "request.todos[0].params.r"),
    ):
        reply = await client.send_message(message)
        assert reply.performative == lam.PERFORMATIVE_NOT_UNDERSTOOD, field
        body = reply.not_understood
        assert (error_pb2.ErrorReason.Name(body.reason), body.field) == (reason, field)
    # None of them became a job.
    jobs = await client._stub.ListJobs(scheduler_service_pb2.ListJobsRequest())
    assert list(jobs.jobs) == []
