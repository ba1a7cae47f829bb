"""What the agent sends stays within the server's budget: a result too large is replaced by a
small OUTPUT_TOO_LARGE failure, oversized progress is dropped, and requests waiting together go
in batches that each fit. The hello says how much the agent itself accepts."""

from __future__ import annotations

from typing import Any

from cpa.common.v1 import error_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent import ExecutionContext, ExecutorRegistry, builtin_registry

from .conftest import StartAgent
from .scripted_scheduler import ScriptedScheduler, ScriptedSession, todo

KIB = 1024
BUDGET = 64 * KIB
_QUIET = ("heartbeat", "progress", "credit")


async def _session(
    scheduler: ScriptedScheduler, start_agent: StartAgent, **settings: Any
) -> ScriptedSession:
    start_agent(scheduler.port, **settings)
    return await scheduler.next_session()


def _assert_output_too_large(result: pb.Result, *, limit: int) -> None:
    assert result.WhichOneof("outcome") == "error"
    assert (result.error.code, result.error.reason, result.error.retryable) == (
        "OUTPUT_TOO_LARGE",
        error_pb2.ERROR_REASON_OUTPUT_TOO_LARGE,
        False,
    )
    assert f"at most {limit} bytes" in result.error.message
    assert not result.artifacts


async def test_the_hello_says_how_large_a_message_the_agent_accepts(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    session = await _session(scheduler, start_agent, max_receive_bytes=3 * 1024 * KIB)
    assert session.hello.max_receive_bytes == 3 * 1024 * KIB


async def test_a_result_over_the_welcomes_budget_fails_its_attempt_as_output_too_large(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    session = await _session(scheduler, start_agent)
    session.welcome(max_report_bytes=BUDGET)
    session.assign("job-1", todo("echo", params={"pad": "x" * (BUDGET + 1)}))

    sent = await session.expect("result", ignore=_QUIET)

    _assert_output_too_large(sent.result, limit=BUDGET)
    assert (sent.result.job_id, sent.result.task_id, sent.result.attempt) == ("job-1", "t1", 1)
    assert sent.ByteSize() < 1024  # the failure itself is small


async def test_without_a_budget_in_the_welcome_the_agents_own_setting_applies(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    session = await _session(scheduler, start_agent, max_report_bytes=BUDGET)
    session.welcome()  # an older server: no max_report_bytes
    session.assign("job-1", todo("echo", params={"pad": "x" * (BUDGET + 1)}))
    session.assign("job-2", todo("echo", params={"pad": "y" * (BUDGET - 1024)}))

    first = await session.expect("result", ignore=_QUIET)
    second = await session.expect("result", ignore=_QUIET)

    _assert_output_too_large(first.result, limit=BUDGET)
    # One that fits is sent as it is.
    assert second.result.outputs["pad"] == "y" * (BUDGET - 1024)


async def test_results_waiting_in_the_outbox_are_refitted_and_batched_for_the_next_server(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    running = start_agent(scheduler.port, slots=4)
    first = await scheduler.next_session()
    first.welcome()  # the first server takes 4 MiB
    pads = {"job-a": 30 * KIB, "job-b": 30 * KIB, "job-c": BUDGET + 1, "job-d": 30 * KIB}
    for job_id, size in pads.items():
        first.assign(job_id, todo("echo", params={"pad": "x" * size}))
    for _ in pads:
        await first.expect("result", ignore=_QUIET)  # never acked
    first.drop()

    # The next takes 64 KiB: the four results are sent again, all at once.
    second = await scheduler.next_session()
    second.welcome(max_report_bytes=BUDGET, accepts_batches=True)
    messages: list[pb.ConnectRequest] = []
    results: list[pb.Result] = []
    while len(results) < len(pads):
        message = await second.next(ignore=("heartbeat",))
        messages.append(message)
        inner = message.batch.requests if message.WhichOneof("kind") == "batch" else [message]
        results += [request.result for request in inner if request.WhichOneof("kind") == "result"]

    assert all(message.ByteSize() <= BUDGET for message in messages)
    assert any(message.WhichOneof("kind") == "batch" for message in messages)
    assert [result.job_id for result in results] == list(pads)
    _assert_output_too_large(results[2], limit=BUDGET)
    assert [results[n].outputs["pad"] for n in (0, 1, 3)] == ["x" * 30 * KIB] * 3
    assert len(running.agent.unacked_results) == len(pads)  # until acked


class _LoudProgress:
    """Reports one progress message too large to send, then a small one, then succeeds."""

    action = "loud"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        await ctx.progress(None, "x" * BUDGET)
        await ctx.progress(50.0, "half")
        return {}


async def test_progress_over_the_budget_is_dropped(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    registry: ExecutorRegistry = builtin_registry()
    registry.register(_LoudProgress())
    session = await _session(scheduler, start_agent, registry=registry)
    session.welcome(max_report_bytes=BUDGET)
    session.assign("job-1", todo("loud"))

    progress = await session.expect("progress", ignore=("heartbeat", "credit"))

    assert progress.progress.message == "half"
    assert (await session.expect("result", ignore=_QUIET)).result.HasField("outputs")
