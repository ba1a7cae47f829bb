"""One session end to end: hello, credit, assignments and the results of every outcome.

Acceptance is silent (no AssignmentAck) and a result returns its slot (no Credit after it):
tests prove those absences by message order, never by waiting a while.
"""

from __future__ import annotations

from typing import Any

from cpa.common.v1 import error_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent import AttemptKey, ExecutionContext, ExecutorRegistry, __version__, builtin_registry

from .conftest import ConnectAgent, StartAgent
from .scripted_scheduler import ScriptedScheduler, ScriptedSession, attempt, todo

_QUIET = ("heartbeat", "progress")


class _ProgressSteps:
    """Reports unknown, zero and known progress, then succeeds."""

    action = "steps"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        await ctx.progress(None, "working, extent unknown")
        await ctx.progress(0.0, "starting the measurable part")
        await ctx.progress(42.5, "almost half")
        return {}


class _CountsRuns:
    """Counts how often it was started; ends at once."""

    action = "counts"

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        self.runs += 1
        return {}


def _registry_with(*executors: Any) -> ExecutorRegistry:
    registry = builtin_registry()
    for executor in executors:
        registry.register(executor)
    return registry


async def _result_of(session: ScriptedSession) -> pb.ConnectRequest:
    """The request carrying the Result; only progress may come before it (no ack, no credit)."""
    return await session.expect("result", ignore=_QUIET)


async def _assert_no_credit_follows(session: ScriptedSession) -> None:
    """Nothing but progress follows a result: the result itself hands its slot back."""
    barrier = await session.barrier(ignore=_QUIET)
    assert barrier.before == []
    # The slot is free again without a Credit: the offer counts no running attempt.
    assert (barrier.offer.available, barrier.offer.cost) == (True, 0.0)


async def test_hello_names_the_agent_and_what_it_can_do(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    running = start_agent(
        scheduler.port,
        slots=3,
        labels={"site": "berlin"},
        capabilities=["browser:chromium"],
        executors=["builtin"],  # the browser's, where Chromium is, would add actions
    )

    session = await scheduler.next_session()

    hello = session.hello
    assert hello.agent_id == "agent-1"
    assert hello.name == "test agent"
    assert hello.tenant == ""  # none named: its token's (or the server's default) tenant
    assert hello.version == __version__
    assert list(hello.capabilities.actions) == ["echo", "fail", "noop", "wait"]
    assert hello.capabilities.slots == 3
    assert dict(hello.capabilities.labels) == {"site": "berlin"}
    assert list(hello.capabilities.capabilities) == ["browser:chromium"]
    assert list(hello.running_attempts) == []
    assert not running.agent.connected.is_set()


async def test_credit_for_all_slots_follows_the_welcome(connect_agent: ConnectAgent) -> None:
    running, session = await connect_agent(slots=3)

    credit = await session.expect("credit")

    assert credit.credit.slots == 3
    assert credit.report_id == 0
    await running.agent.connected.wait()


async def test_echo_assignment_runs_without_an_ack_and_reports_its_outputs(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("echo", params={"greeting": "hi"}), inputs={"invoice": "42"})

    # The result is the first thing the agent sends: an accepted assignment is not acked.
    report = await session.expect("result")
    assert report.report_id > 0
    result = report.result
    assert (result.job_id, result.task_id, result.attempt) == ("job-1", "t1", 1)
    assert result.WhichOneof("outcome") == "outputs"
    assert dict(result.outputs) == {"greeting": "hi", "inputs": {"invoice": "42"}}
    assert not result.cancelled
    await _assert_no_credit_follows(session)


async def test_an_accepted_assignment_sends_nothing_while_it_runs(
    connect_agent: ConnectAgent,
) -> None:
    running, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("wait", params={"seconds": 30}))

    barrier = await session.barrier(ignore=_QUIET)
    assert barrier.before == []
    assert barrier.offer.cost == 1.0  # the offer was made with the attempt running
    assert running.agent.running_attempts == {AttemptKey("job-1", "t1", 1)}


async def test_report_ids_increase_within_a_session(connect_agent: ConnectAgent) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("noop"))
    first = await _result_of(session)
    await _assert_no_credit_follows(session)
    session.assign("job-2", todo("noop"))
    second = await _result_of(session)

    assert 0 < first.report_id < second.report_id
    await _assert_no_credit_follows(session)


async def test_wait_reports_progress_then_succeeds(connect_agent: ConnectAgent) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("wait", params={"seconds": 1.2}))

    started = await session.expect("progress")
    assert started.report_id > 0
    assert started.progress.attempt == 1
    assert started.progress.HasField("percent")
    assert started.progress.percent == 0.0
    later = await session.expect("progress")
    assert later.report_id > started.report_id
    assert 50.0 < later.progress.percent < 100.0
    result = (await session.expect("result")).result
    assert dict(result.outputs) == {"waited_s": 1.2}
    await _assert_no_credit_follows(session)


async def test_progress_percent_is_unset_when_the_executor_does_not_know_it(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent(registry=_registry_with(_ProgressSteps()))
    await session.expect("credit")

    session.assign("job-1", todo("steps"))

    unknown = (await session.expect("progress")).progress
    assert (unknown.job_id, unknown.task_id, unknown.attempt) == ("job-1", "t1", 1)
    assert unknown.message == "working, extent unknown"
    assert not unknown.HasField("percent")
    zero = (await session.expect("progress")).progress
    assert zero.HasField("percent")
    assert zero.percent == 0.0
    known = (await session.expect("progress")).progress
    assert known.HasField("percent")
    assert known.percent == 42.5
    await session.expect("result")


async def test_cancel_stops_a_running_wait_promptly_and_reports_cancelled(
    connect_agent: ConnectAgent,
) -> None:
    running, session = await connect_agent()
    await session.expect("credit")
    session.assign("job-1", todo("wait", params={"seconds": 30}))
    await session.expect("progress")

    session.cancel("job-1")

    # Far below the 30 s wait: the executor stopped at once.
    result = (await session.expect("result", timeout_s=2.0)).result
    assert result.cancelled
    assert result.error.code == "CANCELLED"
    assert not result.error.retryable
    assert result.error.message == "test cancel"
    assert running.agent.running_attempts == frozenset()
    await _assert_no_credit_follows(session)


async def test_fail_reports_the_executors_code_and_retryable_flag(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign(
        "job-1",
        todo("fail", params={"code": "LOGIN_FAILED", "message": "bad password", "retryable": True}),
    )

    result = (await _result_of(session)).result
    assert result.WhichOneof("outcome") == "error"
    assert result.error.code == "LOGIN_FAILED"
    assert result.error.message == "bad password"
    assert result.error.retryable
    assert result.error.reason == error_pb2.ERROR_REASON_UNSPECIFIED
    assert not result.cancelled


async def test_fail_defaults_to_a_non_retryable_failed(connect_agent: ConnectAgent) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("fail"))

    error = (await _result_of(session)).result.error
    assert (error.code, error.message, error.retryable) == ("FAILED", "failed on purpose", False)


async def test_fail_until_attempt_succeeds_on_the_next_attempt(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent()
    await session.expect("credit")
    failing = todo("fail", params={"until_attempt": 1, "retryable": True})

    session.assign("job-1", failing, attempt=1)
    first = (await _result_of(session)).result
    await _assert_no_credit_follows(session)
    session.assign("job-1", failing, attempt=2)
    second = (await _result_of(session)).result

    assert first.error.code == "FAILED"
    assert first.error.retryable
    assert second.attempt == 2
    assert dict(second.outputs) == {"attempt": 2}


async def test_task_timeout_stops_the_attempt_with_task_timeout(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("wait", params={"seconds": 30}, timeout_s=0.2))

    result = (await _result_of(session)).result
    assert result.error.code == "TASK_TIMEOUT"
    assert result.error.reason == error_pb2.ERROR_REASON_TASK_TIMEOUT
    assert result.error.retryable
    assert "timeout of 0.2s" in result.error.message
    assert not result.cancelled


async def test_assignment_deadline_earlier_than_the_timeout_wins_and_is_named(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("wait", params={"seconds": 30}, timeout_s=20), deadline_in_s=0.2)

    # The job deadline stopped it, not the task timeout: said so, and not worth a retry.
    result = (await _result_of(session)).result
    assert result.error.code == "DEADLINE_EXCEEDED"
    assert result.error.reason == error_pb2.ERROR_REASON_JOB_DEADLINE_EXCEEDED
    assert not result.error.retryable
    assert "deadline" in result.error.message
    assert not result.cancelled


async def test_invalid_wait_params_fail_without_retry(connect_agent: ConnectAgent) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("wait", params={"seconds": -1}))

    error = (await _result_of(session)).result.error
    assert error.code == "INVALID_PARAMS"
    assert not error.retryable


async def test_an_action_the_agent_lacks_fails_with_unknown_action(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("send_invoice"))

    error = (await _result_of(session)).result.error
    assert error.code == "UNKNOWN_ACTION"
    assert not error.retryable


async def test_assignment_beyond_the_slots_is_declined(connect_agent: ConnectAgent) -> None:
    running, session = await connect_agent(slots=1)
    await session.expect("credit")
    session.assign("job-1", todo("wait", params={"seconds": 30}))

    session.assign("job-2", todo("noop"))

    # The only ack is the decline: job-1 was taken silently.
    ack = (await session.expect("assignment_ack", ignore=_QUIET)).assignment_ack
    assert ack == pb.AssignmentAck(
        job_id="job-2", task_id="t1", attempt=1, accepted=False, reason="NO_FREE_SLOT"
    )
    assert running.agent.running_attempts == {AttemptKey("job-1", "t1", 1)}


async def test_a_call_for_proposals_is_answered_with_an_offer(connect_agent: ConnectAgent) -> None:
    _, session = await connect_agent(capabilities=["browser:chromium"])
    await session.expect("credit")
    needs_excel = todo("echo")
    needs_excel.required_capabilities.append("app:excel")

    for cfp_id, message in (("cfp-1", todo("echo")), ("cfp-2", needs_excel)):
        session.send(
            pb.ConnectResponse(
                call_for_proposals=pb.CallForProposals(cfp_id=cfp_id, job_id="job-1", todo=message)
            )
        )

    first = (await session.expect("offer")).offer
    second = (await session.expect("offer")).offer
    assert (first.cfp_id, first.available, first.cost) == ("cfp-1", True, 0.0)
    assert (second.cfp_id, second.available) == ("cfp-2", False)


async def test_a_repeated_assignment_of_a_running_attempt_is_ignored(
    connect_agent: ConnectAgent,
) -> None:
    running, session = await connect_agent()
    await session.expect("credit")
    session.assign("job-1", todo("wait", params={"seconds": 30}))

    session.assign("job-1", todo("wait", params={"seconds": 30}))

    barrier = await session.barrier(ignore=_QUIET)
    assert barrier.before == []
    assert barrier.offer.cost == 1.0
    assert running.agent.running_attempts == {AttemptKey("job-1", "t1", 1)}
    heartbeat = await session.next_heartbeat()
    assert list(heartbeat.running_attempts) == [attempt("job-1")]


async def test_a_repeated_assignment_of_an_unacked_result_is_ignored(
    connect_agent: ConnectAgent,
) -> None:
    counter = _CountsRuns()
    running, session = await connect_agent(registry=_registry_with(counter))
    await session.expect("credit")
    session.assign("job-1", todo("counts"))
    report = await _result_of(session)

    session.assign("job-1", todo("counts"))  # before the result is acked

    assert (await session.barrier()).before == []
    # Started again, it would be running now or have run: neither happened.
    assert running.agent.running_attempts == frozenset()
    assert counter.runs == 1
    assert running.agent.unacked_results == (AttemptKey("job-1", "t1", 1),)
    session.ack(report.report_id)
    assert (await session.barrier()).before == []
    assert not running.agent.unacked_results
