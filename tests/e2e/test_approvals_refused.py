"""Until approvals can be given, a ToDo that requires one is refused at submission (it would
leave its job in WAITING_APPROVAL for ever): explicit ToDos, batches, LAM requests, and intents
whose template makes such a task."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cpa.common.v1 import error_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import todo, todos_spec

_CATALOG = """
intents:
  - name: pay_invoice
    description: Pay an invoice after a person approved it.
    patterns:
      - keywords: [pay, invoice]
    tasks:
      - id: read
        action: noop
      - id: pay
        action: noop
        depends_on: [read]
        requires_approval: true
"""


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    catalog = tmp_path / "intents.yaml"
    catalog.write_text(_CATALOG)
    return Settings(data_dir=tmp_path / "data", intents_path=catalog)


async def _refused(client: SchedulerClient, spec: job_pb2.JobSpec) -> CpaError:
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(spec)
    error = caught.value
    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "APPROVAL_NOT_SUPPORTED",
    ), error.message
    assert [v.field for v in error.field_violations] == [error.metadata["field"]]
    return error


async def test_an_explicit_todo_that_requires_approval_is_refused_naming_the_field(
    client: SchedulerClient,
) -> None:
    spec = todos_spec(todo("a", "noop"), todo("b", "noop", requires_approval=True))
    error = await _refused(client, spec)
    assert error.metadata["field"] == "spec.todos.todos[1].requires_approval"
    assert "'b'" in error.message
    assert [job async for job in client.list_jobs()] == []  # nothing was created


async def test_an_intent_whose_template_requires_approval_is_refused(
    client: SchedulerClient,
) -> None:
    by_name = job_pb2.JobSpec(intent=job_pb2.IntentInvocation(name="pay_invoice"))
    error = await _refused(client, by_name)
    assert error.metadata["field"] == "spec.intent.name"
    assert "'pay'" in error.message
    assert "pay_invoice" in error.message
    by_text = await _refused(client, job_pb2.JobSpec(text="please pay the invoice"))
    assert by_text.metadata["field"] == "spec.text"
    # A preview still shows the plan: nothing runs.
    preview = await client.preview_plan(by_name)
    assert [t.requires_approval for t in preview.todos] == [False, True]


async def test_a_batch_with_one_such_request_creates_nothing(client: SchedulerClient) -> None:
    ok = todos_spec(todo("a", "noop"))
    needs_approval = todos_spec(todo("a", "noop", requires_approval=True))
    with pytest.raises(CpaError) as caught:
        await client.batch_schedule_jobs([ok, needs_approval])
    assert caught.value.reason == "APPROVAL_NOT_SUPPORTED"
    assert caught.value.metadata["field"] == "requests[1].spec.todos.todos[0].requires_approval"
    assert [job async for job in client.list_jobs()] == []


async def test_a_lam_request_with_such_a_todo_is_refused(client: SchedulerClient) -> None:
    message = lam.LamMessage(
        id="m-1",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        request=lam.RequestBody(todos=[todo("a", "noop", requires_approval=True)]),
    )
    reply = await client.send_message(message)
    assert reply.performative == lam.PERFORMATIVE_REFUSE
    assert reply.refuse.reason == error_pb2.ERROR_REASON_APPROVAL_NOT_SUPPORTED
    assert reply.refuse.field == "request.todos[0].requires_approval"
