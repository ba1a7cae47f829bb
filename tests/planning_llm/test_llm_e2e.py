"""Free text planned by the model through a real scheduler: gRPC, the OpenAI provider on the
loopback server, a real agent running the plan to SUCCEEDED. Structured requests never reach
the model, and PreviewPlan shows how a plan came about."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from cpa.common.v1 import error_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.domain import MAX_FIELD_BYTES, MAX_MESSAGE_BYTES
from tests.e2e.conftest import (
    EVENT_TIMEOUT_S,
    Agents,
    Scheduler,
    finished,
    todo,
    todos_spec,
)
from tests.support.openai_server import (
    OpenAIServer,
    Reply,
    chat_reply,
    error_reply,
    refusal_reply,
)

from .answers import GOOD_STEPS, intent, plan, step

TEXT = "say hello, pause, then say it again"


@pytest.fixture
def target(scheduler: Scheduler) -> str:
    return scheduler.target


@pytest.fixture
async def stub(target: str) -> AsyncIterator[Any]:
    # Any: the generated stub's types are the sync ones.
    async with grpc.aio.insecure_channel(target) as channel:
        yield scheduler_service_pb2_grpc.SchedulerServiceStub(channel)


@pytest.fixture
async def agents(target: str) -> AsyncIterator[Agents]:
    pool = Agents(target=target)
    try:
        yield pool
    finally:
        await pool.stop_all()


async def test_free_text_is_planned_by_the_model_and_runs_to_succeeded(
    client: SchedulerClient, agents: Agents, openai_server: OpenAIServer
) -> None:
    await agents.start("builtin")
    openai_server.chat.push(intent("unknown", 0.9), plan(*GOOD_STEPS))
    created = await client.schedule_job(job_pb2.JobSpec(text=TEXT))
    job = await finished(client, created.job.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [t.todo.id for t in job.tasks] == ["greet", "pause", "repeat"]
    # The planning prompt listed what the connected agent serves.
    catalog = openai_server.chat_requests[1].messages[0]["content"]
    assert "- echo:" in catalog
    assert "- fail:" in catalog


async def test_a_succeeded_plan_is_recalled_for_a_paraphrase_in_the_next_prompt(
    scheduler: Scheduler,
    client: SchedulerClient,
    agents: Agents,
    openai_server: OpenAIServer,
) -> None:
    """Done when (issue 16): a plan that succeeded is retrieved for a paraphrased request and
    appears in the next planning prompt (the job recorder puts it in the semantic memory)."""
    await agents.start("builtin")
    openai_server.chat.push(intent("unknown", 0.9), plan(*GOOD_STEPS))
    first = await client.schedule_job(job_pb2.JobSpec(text=TEXT))
    assert (await finished(client, first.job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    memory = scheduler.server.memory
    assert memory is not None
    await asyncio.wait_for(memory.recorder.drained(), EVENT_TIMEOUT_S)

    openai_server.chat.push(intent("unknown", 0.9), plan(*GOOD_STEPS))
    paraphrase = "say hello, wait a moment, then say hello again"
    second = await client.schedule_job(job_pb2.JobSpec(text=paraphrase))
    assert (await finished(client, second.job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    first_prompt = openai_server.chat_requests[1].messages[0]["content"]
    second_prompt = openai_server.chat_requests[3].messages[0]["content"]
    assert TEXT not in first_prompt  # nothing was remembered yet
    # The first job, its request and its plan, is the second planning's example.
    assert TEXT in second_prompt
    assert '"greet"' in second_prompt or "greet" in second_prompt
    assert paraphrase in openai_server.chat_requests[3].messages[-1]["content"]


async def test_structured_jobs_never_reach_the_model(
    client: SchedulerClient, agents: Agents, openai_server: OpenAIServer
) -> None:
    await agents.start("builtin")
    created = await client.schedule_job(todos_spec(todo("a", "noop")))
    named = job_pb2.JobSpec(
        intent=job_pb2.IntentInvocation(
            name="send_mail", parameters=_struct(recipient="a@b.example")
        )
    )
    await client.schedule_job(named)
    assert (await finished(client, created.job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    assert openai_server.chat_requests == []


async def test_preview_shows_decision_reasoning_attempts_usage_and_prompts(
    stub: Any, openai_server: OpenAIServer
) -> None:
    openai_server.chat.push(
        intent("unknown", 0.9), plan(step("a", "teleport")), plan(*GOOD_STEPS, reasoning="why")
    )
    preview = await stub.PreviewPlan(
        scheduler_service_pb2.PreviewPlanRequest(spec=job_pb2.JobSpec(text=TEXT))
    )
    assert preview.decided_by == "llm_planner"
    assert "no rule matched" in preview.decision_reason
    assert preview.reasoning == "why"
    assert [len(a.problems) for a in preview.attempts] == [1, 0]
    assert preview.attempts[0].problems[0].field == "tasks[0].action"
    assert preview.usage.prompt_tokens == 33
    assert [p.name for p in preview.prompts] == ["intent", "plan"]
    assert preview.prompts[1].messages[1].content.endswith(f"Request: {TEXT}")
    assert [t.id for t in preview.todos] == ["greet", "pause", "repeat"]
    assert not await _jobs(stub)


async def test_a_plan_that_stays_invalid_is_refused_and_nothing_is_created(
    client: SchedulerClient,
    stub: Any,
    openai_server: OpenAIServer,
) -> None:
    cycle = plan(step("a", "noop", depends_on=("b",)), step("b", "noop", depends_on=("a",)))
    openai_server.chat.push(intent("unknown", 0.9), cycle, cycle)
    with pytest.raises(CpaError) as refused:
        await client.schedule_job(job_pb2.JobSpec(text=TEXT))
    error = refused.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PLAN_INVALID")
    assert error.metadata["field"] == "spec.text"
    assert error.metadata["attempts"] == "2"
    assert "cycle" in error.metadata["problems"]
    assert not await _jobs(stub)


@pytest.mark.parametrize(
    ("answer", "code", "reason"),
    [
        (refusal_reply(), grpc.StatusCode.FAILED_PRECONDITION, "LLM_REFUSED"),
        (
            chat_reply("{", finish_reason="length"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "LLM_OUTPUT_TRUNCATED",
        ),
        (error_reply(503), grpc.StatusCode.UNAVAILABLE, "LLM_UNAVAILABLE"),
    ],
)
async def test_a_model_without_a_usable_answer_is_a_clear_grpc_error(
    stub: Any, openai_server: OpenAIServer, answer: Reply, code: grpc.StatusCode, reason: str
) -> None:
    openai_server.chat.push(intent("unknown", 0.9), answer)
    # The raw stub: the SDK would retry UNAVAILABLE, and the retry meet an unscripted server.
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.ScheduleJob(
            scheduler_service_pb2.ScheduleJobRequest(spec=job_pb2.JobSpec(text=TEXT))
        )
    error = CpaError.from_rpc_error(failed.value)
    assert (error.code, error.reason) == (code, reason)
    assert error.metadata["field"] == "spec.text"
    assert not await _jobs(stub)


async def test_a_huge_text_never_reaches_the_model(
    client: SchedulerClient, openai_server: OpenAIServer
) -> None:
    with pytest.raises(CpaError) as refused:
        await client.schedule_job(job_pb2.JobSpec(text="plan " * 10_000))
    assert refused.value.reason == "TEXT_TOO_LONG"
    assert openai_server.chat_requests == []


async def _jobs(stub: Any) -> list[job_pb2.Job]:
    return list((await stub.ListJobs(scheduler_service_pb2.ListJobsRequest())).jobs)


def _struct(**values: str) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


async def test_hostile_model_answers_end_in_bounded_errors(
    stub: Any, openai_server: OpenAIServer
) -> None:
    # 200 forged tasks, each with problems: the refusal lists 20 and stays within a trailer.
    forged = plan(*(step(f"t{i}", "os.system", {"cmd": "x" * 2000}) for i in range(200)))
    openai_server.chat.push(intent("unknown", 0.9), forged, forged)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PreviewPlan(
            scheduler_service_pb2.PreviewPlanRequest(spec=job_pb2.JobSpec(text=TEXT))
        )
    error = CpaError.from_rpc_error(refused.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PLAN_INVALID")
    assert len(error.message) <= MAX_MESSAGE_BYTES
    assert all(len(value) <= MAX_FIELD_BYTES for value in error.metadata.values())
    # An answer of 50 000 nested brackets, twice: the model's fault, said so.
    deep = chat_reply("[" * 50_000 + "]" * 50_000)
    openai_server.chat.push(intent("unknown", 0.9), deep, deep)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.PreviewPlan(
            scheduler_service_pb2.PreviewPlanRequest(spec=job_pb2.JobSpec(text=TEXT))
        )
    assert CpaError.from_rpc_error(bad.value).reason == "LLM_BAD_ANSWER"


async def test_a_lam_request_in_words_is_planned_by_the_model(
    client: SchedulerClient, agents: Agents, openai_server: OpenAIServer
) -> None:
    await agents.start("builtin")
    openai_server.chat.push(intent("unknown", 0.9), plan(*GOOD_STEPS))
    message = lam.LamMessage(
        id="m-1",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        request=lam.RequestBody(text=TEXT),
    )
    reply = await client.send_message(message)
    assert reply.performative == lam.PERFORMATIVE_AGREE
    job = await finished(client, reply.agree.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    # A plan that stays invalid is a refuse naming the text.
    bad = plan(step("a", "teleport"))
    openai_server.chat.push(intent("unknown", 0.9), bad, bad)
    message.id = "m-2"
    refused = await client.send_message(message)
    assert refused.performative == lam.PERFORMATIVE_REFUSE
    assert refused.refuse.reason == error_pb2.ERROR_REASON_PLAN_INVALID
    assert refused.refuse.field == "request.text"
