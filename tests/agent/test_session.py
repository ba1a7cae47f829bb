"""One session end to end: hello, credit, assignments and the results of every outcome."""

from __future__ import annotations

from cpa.common.v1 import error_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent import __version__

from .conftest import ConnectAgent, StartAgent
from .scripted_scheduler import ScriptedScheduler, ScriptedSession, todo


async def _result_of(session: ScriptedSession) -> pb.ConnectRequest:
    """Skips the ack and any progress, and returns the request carrying the Result."""
    ack = await session.expect("assignment_ack")
    assert ack.assignment_ack.accepted
    return await session.expect("result", ignore=("heartbeat", "progress"))


async def test_hello_names_the_agent_and_what_it_can_do(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    running = start_agent(
        scheduler.port, slots=3, labels={"site": "berlin"}, capabilities=["browser:chromium"]
    )

    session = await scheduler.next_session()

    hello = session.hello
    assert hello.agent_id == "agent-1"
    assert hello.name == "test agent"
    assert hello.tenant == "default"
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


async def test_echo_assignment_is_acked_and_reports_its_outputs(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("echo", params={"greeting": "hi"}), inputs={"invoice": "42"})

    ack = await session.expect("assignment_ack")
    assert ack.assignment_ack == pb.AssignmentAck(
        job_id="job-1", task_id="t1", attempt=1, accepted=True
    )
    report = await session.expect("result")
    assert report.report_id > 0
    result = report.result
    assert (result.job_id, result.task_id, result.attempt) == ("job-1", "t1", 1)
    assert result.WhichOneof("outcome") == "outputs"
    assert dict(result.outputs) == {"greeting": "hi", "inputs": {"invoice": "42"}}
    assert not result.cancelled
    # The slot is free again once the result is out.
    assert (await session.expect("credit")).credit.slots == 1


async def test_report_ids_increase_within_a_session(connect_agent: ConnectAgent) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("noop"))
    first = await _result_of(session)
    await session.expect("credit")
    session.assign("job-2", todo("noop"))
    second = await _result_of(session)

    assert 0 < first.report_id < second.report_id


async def test_wait_reports_progress_then_succeeds(connect_agent: ConnectAgent) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("wait", params={"seconds": 1.2}))

    await session.expect("assignment_ack")
    started = await session.expect("progress")
    assert started.report_id > 0
    assert started.progress.attempt == 1
    assert started.progress.percent == 0.0
    later = await session.expect("progress")
    assert later.report_id > started.report_id
    assert 50.0 < later.progress.percent < 100.0
    result = (await session.expect("result")).result
    assert dict(result.outputs) == {"waited_s": 1.2}


async def test_cancel_stops_a_running_wait_promptly_and_reports_cancelled(
    connect_agent: ConnectAgent,
) -> None:
    running, session = await connect_agent()
    await session.expect("credit")
    session.assign("job-1", todo("wait", params={"seconds": 30}))
    await session.expect("assignment_ack")
    await session.expect("progress")

    session.cancel("job-1")

    # Far below the 30 s wait: the executor stopped at once.
    result = (await session.expect("result", timeout_s=2.0)).result
    assert result.cancelled
    assert result.error.code == "CANCELLED"
    assert not result.error.retryable
    assert result.error.message == "test cancel"
    assert running.agent.running_attempts == frozenset()


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
    await session.expect("credit")
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


async def test_assignment_deadline_earlier_than_the_timeout_wins(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent()
    await session.expect("credit")

    session.assign("job-1", todo("wait", params={"seconds": 30}, timeout_s=20), deadline_in_s=0.2)

    result = (await _result_of(session)).result
    assert result.error.code == "TASK_TIMEOUT"
    assert "deadline" in result.error.message


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
    _, session = await connect_agent(slots=1)
    await session.expect("credit")
    session.assign("job-1", todo("wait", params={"seconds": 30}))
    await session.expect("assignment_ack")

    session.assign("job-2", todo("noop"))

    ack = (await session.expect("assignment_ack", ignore=("heartbeat", "progress"))).assignment_ack
    assert (ack.job_id, ack.accepted, ack.reason) == ("job-2", False, "NO_FREE_SLOT")


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


async def test_a_repeated_assignment_is_confirmed_but_runs_once(
    connect_agent: ConnectAgent,
) -> None:
    running, session = await connect_agent()
    await session.expect("credit")
    session.assign("job-1", todo("wait", params={"seconds": 30}))
    await session.expect("assignment_ack")

    session.assign("job-1", todo("wait", params={"seconds": 30}))

    ack = (await session.expect("assignment_ack", ignore=("heartbeat", "progress"))).assignment_ack
    assert (ack.job_id, ack.accepted) == ("job-1", True)
    assert len(running.agent.running_attempts) == 1
