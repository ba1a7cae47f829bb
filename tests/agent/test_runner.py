"""One attempt without a stream: how each outcome of an executor becomes a Result."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from cpa.common.v1 import todo_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent import ExecutionContext, ExecutorError, ExecutorRegistry
from cpa_agent.runner import AttemptRunner, StopReason, action_name

from .scripted_scheduler import struct, todo


class _Raises:
    action = "raises"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        raise ValueError("boom")


class _Detailed:
    action = "detailed"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        raise ExecutorError(
            "PORTAL_DOWN", "portal answered 503", retryable=True, details={"s": 503}
        )


class _NotJson:
    action = "not_json"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {"when": object()}


class _Blocks:
    action = "blocks"

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        self.started.set()
        await asyncio.Event().wait()
        return {}


class _Stubborn:
    """Ignores every cancel until released: an action stuck in a call it cannot interrupt."""

    action = "stubborn"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.ended = False

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        self.started.set()
        while not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()
        self.ended = True
        return {"late": True}


class _SeesContext:
    action = "sees"

    def __init__(self) -> None:
        self.seen: ExecutionContext | None = None

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        self.seen = ctx
        return {}


def _runner(
    registry: ExecutorRegistry, action: str, *, stop_grace_s: float = 5.0, **todo_args: Any
) -> AttemptRunner:
    progress: list[pb.Progress] = []
    return AttemptRunner(
        assignment=pb.Assignment(job_id="job-1", todo=todo(action, **todo_args), attempt=3),
        registry=registry,
        on_progress=progress.append,
        stop_grace_s=stop_grace_s,
    )


async def test_an_unexpected_exception_is_retryable_and_names_only_type_and_text() -> None:
    result = await _runner(ExecutorRegistry(executors=[_Raises()]), "raises").run()

    assert result.error.code == "EXECUTOR_EXCEPTION"
    assert result.error.message == "ValueError: boom"
    assert result.error.retryable
    assert "Traceback" not in str(result)


async def test_executor_error_details_travel_with_the_error() -> None:
    result = await _runner(ExecutorRegistry(executors=[_Detailed()]), "detailed").run()

    assert (result.error.code, result.error.retryable) == ("PORTAL_DOWN", True)
    assert dict(result.error.details) == {"s": 503}


async def test_outputs_that_are_not_json_fail_without_retry() -> None:
    result = await _runner(ExecutorRegistry(executors=[_NotJson()]), "not_json").run()

    assert result.error.code == "INVALID_OUTPUTS"
    assert not result.error.retryable


@pytest.mark.parametrize(
    ("reason", "code", "retryable", "cancelled"),
    [
        (StopReason.CANCELLED, "CANCELLED", False, True),
        (StopReason.SHUTDOWN, "AGENT_SHUTDOWN", True, False),
    ],
)
async def test_stop_ends_the_executor_and_says_why(
    reason: StopReason, code: str, retryable: bool, cancelled: bool
) -> None:
    executor = _Blocks()
    runner = _runner(ExecutorRegistry(executors=[executor]), "blocks")
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(executor.started.wait(), 5.0)

    runner.stop(reason, "because")

    result = await asyncio.wait_for(task, 5.0)
    assert (result.error.code, result.error.retryable, result.cancelled) == (
        code,
        retryable,
        cancelled,
    )
    assert result.error.message == "because"


@pytest.mark.parametrize("stopped_by", ["timeout", "cancel"])
async def test_an_action_that_ignores_the_stop_is_abandoned_after_the_grace(
    stopped_by: str,
) -> None:
    executor = _Stubborn()
    timeout_s = 0.05 if stopped_by == "timeout" else None
    runner = _runner(
        ExecutorRegistry(executors=[executor]), "stubborn", stop_grace_s=0.05, timeout_s=timeout_s
    )
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(executor.started.wait(), 5.0)
    if stopped_by == "cancel":
        runner.stop(StopReason.CANCELLED, "job cancelled")

    result = await asyncio.wait_for(task, 5.0)

    # Reported although the action still runs: the agent does not hang on it.
    assert not executor.ended
    expected = "TASK_TIMEOUT" if stopped_by == "timeout" else "CANCELLED"
    assert result.error.code == expected
    assert not result.HasField("outputs")
    executor.release.set()


async def test_cancelling_the_caller_propagates_instead_of_reporting() -> None:
    executor = _Blocks()
    task = asyncio.create_task(_runner(ExecutorRegistry(executors=[executor]), "blocks").run())
    await asyncio.wait_for(executor.started.wait(), 5.0)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_context_carries_params_inputs_and_the_earliest_deadline() -> None:
    executor = _SeesContext()
    assignment = pb.Assignment(
        job_id="job-1",
        todo=todo("sees", params={"a": 1}, timeout_s=60),
        attempt=2,
        inputs=struct({"pdf": "x"}),
        credential_refs={"portal": "vault:portal"},
    )
    runner = AttemptRunner(
        assignment=assignment,
        registry=ExecutorRegistry(executors=[executor]),
        on_progress=lambda progress: None,
    )

    await runner.run()

    ctx = executor.seen
    assert ctx is not None
    assert (ctx.job_id, ctx.task_id, ctx.attempt) == ("job-1", "t1", 2)
    assert ctx.params == {"a": 1.0}
    assert ctx.inputs == {"pdf": "x"}
    assert ctx.credential_refs == {"portal": "vault:portal"}
    assert ctx.deadline is not None


@pytest.mark.parametrize(
    ("message", "name"),
    [
        (todo_pb2.ToDo(action=todo_pb2.ACTION_TYPE_OPEN_APP), "open_app"),
        (todo_pb2.ToDo(action=todo_pb2.ACTION_TYPE_SEND_MAIL), "send_mail"),
        (todo_pb2.ToDo(action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="echo"), "echo"),
        (todo_pb2.ToDo(), ""),
    ],
)
def test_action_name_matches_the_schedulers_names(message: todo_pb2.ToDo, name: str) -> None:
    assert action_name(message) == name


class _RecordsCancel:
    """Blocks until cancelled; keeps what its context said about the cancel at that moment."""

    action = "records"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.reason_seen: list[str | None] = []

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        assert ctx.cancel_reason is None  # not cancelled yet
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.reason_seen.append(ctx.cancel_reason)
        return {}


@pytest.mark.parametrize(
    ("reason", "seen"),
    [(StopReason.CANCELLED, "wrong invoice"), (StopReason.SHUTDOWN, None)],
)
async def test_the_executor_sees_the_schedulers_cancel_reason(
    reason: StopReason, seen: str | None
) -> None:
    executor = _RecordsCancel()
    runner = _runner(ExecutorRegistry(executors=[executor]), "records")
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(executor.started.wait(), 5.0)

    runner.stop(reason, "wrong invoice")

    result = await asyncio.wait_for(task, 5.0)
    assert executor.reason_seen == [seen]  # a drain is no cancel by the scheduler
    assert result.error.message == "wrong invoice"
