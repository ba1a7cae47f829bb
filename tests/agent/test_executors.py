"""The registry and the built-in executors, called directly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cpa.common.v1 import todo_pb2
from cpa_agent import ExecutionContext, Executor, ExecutorError, builtin_registry


def _context(*, params: dict[str, Any], attempt: int = 1) -> ExecutionContext:
    return ExecutionContext(
        job_id="job-1",
        task_id="t1",
        attempt=attempt,
        todo=todo_pb2.ToDo(id="t1"),
        params=params,
        inputs={},
        deadline=None,
    )


def _executor(action: str) -> Executor:
    executor = builtin_registry().get(action)
    assert executor is not None
    return executor


def test_builtin_registry_offers_the_four_test_actions() -> None:
    registry = builtin_registry()

    assert registry.actions() == ["echo", "fail", "noop", "wait"]
    assert all(isinstance(registry.get(action), Executor) for action in registry.actions())
    assert registry.get("click") is None


def test_an_action_registers_once() -> None:
    registry = builtin_registry()

    with pytest.raises(ValueError, match="already registered"):
        registry.register(_executor("echo"))


async def test_noop_and_echo() -> None:
    assert await _executor("noop").run(_context(params={"x": 1})) == {}
    assert await _executor("echo").run(_context(params={"x": 1})) == {"x": 1}


@pytest.mark.parametrize("seconds", [None, -1, "5", True])
async def test_wait_rejects_a_bad_duration(seconds: object) -> None:
    params = {} if seconds is None else {"seconds": seconds}

    with pytest.raises(ExecutorError) as caught:
        await _executor("wait").run(_context(params=params))

    assert caught.value.code == "INVALID_PARAMS"
    assert not caught.value.retryable


async def test_wait_zero_returns_at_once() -> None:
    assert await _executor("wait").run(_context(params={"seconds": 0})) == {"waited_s": 0.0}


async def test_wait_with_ignore_cancel_waits_out_a_cancel() -> None:
    waiting = asyncio.create_task(
        _executor("wait").run(_context(params={"seconds": 0.2, "ignore_cancel": True}))
    )
    await asyncio.sleep(0)  # let it start waiting, so the cancel lands inside the wait
    waiting.cancel()
    assert await asyncio.wait_for(waiting, 5.0) == {"waited_s": 0.2}


async def test_wait_rejects_a_non_boolean_ignore_cancel() -> None:
    with pytest.raises(ExecutorError) as caught:
        await _executor("wait").run(_context(params={"seconds": 0, "ignore_cancel": "yes"}))
    assert caught.value.code == "INVALID_PARAMS"


@pytest.mark.parametrize(("attempt", "fails"), [(1, True), (2, True), (3, False)])
async def test_fail_until_attempt(attempt: int, fails: bool) -> None:
    context = _context(params={"until_attempt": 2.0}, attempt=attempt)

    if fails:
        with pytest.raises(ExecutorError):
            await _executor("fail").run(context)
    else:
        assert await _executor("fail").run(context) == {"attempt": attempt}
