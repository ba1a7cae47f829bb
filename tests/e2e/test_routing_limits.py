"""Routing text cannot freeze the server (issue 11, item 1), over real sockets.

The attack: PreviewPlan with "get from portal " repeated to 8 KiB. Python's backtracking `re` took
20 s on it in the shipped `portal_download_and_mail` pattern, on the event loop: a GetJob sent
alongside waited as long, the agent's stream dropped and its running attempt ran twice. Now the
text is capped (CPA_ROUTING_TEXT_MAX_BYTES) and the patterns run on RE2 (linear time).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from cpa.common.v1 import error_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.settings import Settings

from ..fixtures.routing_attacks import attack, near_misses
from .conftest import (
    EVENT_TIMEOUT_S,
    AgentProcesses,
    Scheduler,
    finished,
    first_event,
    task_reached,
    todo,
    todos_spec,
)

# What a GetJob may take while attacks run; the old code answered after 20 s.
PROBE_DEADLINE_S = 2.0


def _long_name(size: int) -> str:
    """An intent name of `size` characters from many letters: difflib's worst kind of input."""
    rng = random.Random(13)
    letters = [chr(code) for code in range(0x430, 0x4FF)] + list("abcdefghijklmnopqrstuvwxyz_")
    return "".join(rng.choices(letters, k=size))


def _lam_request(message_id: str, text: str) -> lam.LamMessage:
    return lam.LamMessage(
        id=message_id,
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        correlation=lam.Correlation(conversation_id="conv-redos"),
        request=lam.RequestBody(text=text),
    )


Call = Callable[[SchedulerClient, str], Awaitable[Any]]


async def _preview(client: SchedulerClient, text: str) -> Any:
    return await client.preview_plan(job_pb2.JobSpec(text=text))


async def _schedule(client: SchedulerClient, text: str) -> Any:
    return await client.schedule_job(job_pb2.JobSpec(text=text))


async def _schedule_intent(client: SchedulerClient, name: str) -> Any:
    return await client.schedule_job(job_pb2.JobSpec(intent=job_pb2.IntentInvocation(name=name)))


async def _batch(client: SchedulerClient, text: str) -> Any:
    return await client.batch_schedule_jobs([job_pb2.JobSpec(text=text)])


@pytest.mark.parametrize(
    ("call", "field"),
    [(_preview, "spec.text"), (_schedule, "spec.text"), (_batch, "requests[0].spec.text")],
    ids=["PreviewPlan", "ScheduleJob", "BatchScheduleJobs"],
)
async def test_the_8_kib_attack_is_refused_naming_the_field(
    client: SchedulerClient, call: Call, field: str
) -> None:
    with pytest.raises((CpaError, grpc.aio.AioRpcError)) as caught:
        await call(client, attack(8 * 1024))

    error = caught.value
    if isinstance(error, grpc.aio.AioRpcError):
        error = CpaError.from_rpc_error(error)
    assert isinstance(error, CpaError)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TEXT_TOO_LONG")
    assert [violation.field for violation in error.field_violations] == [field]
    assert "1024 bytes" in error.message


async def test_a_lam_request_with_the_attack_is_refused_naming_the_field(
    client: SchedulerClient,
) -> None:
    reply = await client.send_message(_lam_request("m-redos", attack(8 * 1024)))

    assert reply.performative == lam.PERFORMATIVE_REFUSE
    assert reply.refuse.reason == error_pb2.ERROR_REASON_TEXT_TOO_LONG
    assert reply.refuse.field == "request.text"


async def test_attacks_at_the_cap_leave_a_running_attempt_and_other_calls_alone(
    scheduler: Scheduler,
    scheduler_settings: Settings,
    client: SchedulerClient,
    agent_processes: AgentProcesses,
) -> None:
    # The agent is a process of its own: its heartbeats go on whatever the scheduler's loop does,
    # and a loop held past the lease would mark its attempt LOST and run it again.
    agent_processes.start("runner")
    scheduled = await client.schedule_job(todos_spec(todo("step", "wait", params={"seconds": 4})))
    job = scheduled.job
    await first_event(client, job.job_id, task_reached("step", job_pb2.TASK_STATE_RUNNING))

    cap = scheduler_settings.routing_text_max_bytes
    texts = [attack(cap), attack(cap - 7), near_misses(cap), near_misses(cap - 3)]
    async with SchedulerClient(scheduler.target, timeout_s=PROBE_DEADLINE_S) as probe:

        async def attacks() -> list[Any]:
            previews = [_preview(client, text) for text in texts * 4]
            # Text that matches no intent becomes no job: UNKNOWN_INTENT, after the same routing.
            schedules = [_schedule(client, text) for text in texts]
            lams = [client.send_message(_lam_request(f"m-{i}", t)) for i, t in enumerate(texts)]
            # An unknown intent name is compared with the catalog's for suggestions: only its
            # head: a 100 000-letter name cost difflib 60 ms, a megabyte 1.6 s.
            names = [_schedule_intent(client, _long_name(100 * 1024)) for _ in range(2)]
            return await asyncio.gather(
                *previews, *schedules, *lams, *names, return_exceptions=True
            )

        async def probes(attacking: asyncio.Task[list[Any]]) -> list[job_pb2.Job]:
            # GetJob after GetJob for as long as the attacks are in flight; one that misses its
            # deadline fails with DEADLINE_EXCEEDED: the loop was held.
            seen = [await probe.get_job(job.job_id)]
            while not attacking.done():
                seen.append(await probe.get_job(job.job_id))
            return seen

        attacking = asyncio.create_task(attacks())
        seen = await asyncio.wait_for(probes(attacking), EVENT_TIMEOUT_S)
        answers = await attacking

    assert [answer.job_id for answer in seen] == [job.job_id] * len(seen)
    previews = answers[: len(texts) * 4]
    assert all(preview.intent == "unknown" for preview in previews), previews
    schedules = answers[len(texts) * 4 : len(texts) * 5]
    assert all(isinstance(e, CpaError) and e.reason == "UNKNOWN_INTENT" for e in schedules), [
        repr(e) for e in schedules
    ]
    lams = answers[len(texts) * 5 : len(texts) * 6]
    assert all(r.refuse.reason == error_pb2.ERROR_REASON_UNKNOWN_INTENT for r in lams), lams

    names = answers[len(texts) * 6 :]
    assert all(isinstance(e, CpaError) and e.reason == "UNKNOWN_INTENT" for e in names), [
        repr(e)[:200] for e in names
    ]

    done = await finished(client, job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    [attempt] = done.tasks[0].attempts
    assert (attempt.number, attempt.agent_id) == (1, "runner")
    assert attempt.state == job_pb2.ATTEMPT_STATE_SUCCEEDED
