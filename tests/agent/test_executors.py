"""The registry and the built-in executors, called directly."""

from __future__ import annotations

import asyncio

import pytest

from cpa_agent import Executor, ExecutorError, builtin_registry
from cpa_agent.executors.testing import make_context, run_alone


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
    assert await run_alone(_executor("noop"), params={"x": 1}) == {}
    assert await run_alone(_executor("echo"), params={"x": 1}) == {"x": 1}


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (None, "Field required"),
        (-1, "greater than or equal to 0"),
        ("5", "Input should be a valid"),
        (True, "Input should be a valid"),
    ],
)
async def test_wait_rejects_a_bad_duration(seconds: object, message: str) -> None:
    params = {} if seconds is None else {"seconds": seconds}

    with pytest.raises(ExecutorError) as caught:
        await run_alone(_executor("wait"), params=params)

    assert caught.value.code == "INVALID_PARAMS"
    assert not caught.value.retryable
    assert caught.value.details["field"] == "params.seconds"
    assert message in caught.value.details["message"]


async def test_wait_refuses_an_unknown_param_by_name() -> None:
    with pytest.raises(ExecutorError) as caught:
        await run_alone(_executor("wait"), params={"seconds": 1, "second": 2})
    assert caught.value.details["field"] == "params.second"


async def test_wait_zero_returns_at_once() -> None:
    assert await run_alone(_executor("wait"), params={"seconds": 0}) == {"waited_s": 0.0}


async def test_wait_with_ignore_cancel_waits_out_a_cancel() -> None:
    waiting = asyncio.create_task(
        run_alone(_executor("wait"), params={"seconds": 0.2, "ignore_cancel": True})
    )
    await asyncio.sleep(0)  # let it start waiting, so the cancel lands inside the wait
    waiting.cancel()
    assert await asyncio.wait_for(waiting, 5.0) == {"waited_s": 0.2}


async def test_wait_rejects_a_non_boolean_ignore_cancel() -> None:
    with pytest.raises(ExecutorError) as caught:
        await run_alone(_executor("wait"), params={"seconds": 0, "ignore_cancel": "yes"})
    assert caught.value.code == "INVALID_PARAMS"
    assert caught.value.details["field"] == "params.ignore_cancel"


@pytest.mark.parametrize(("attempt", "fails"), [(1, True), (2, True), (3, False)])
async def test_fail_until_attempt(attempt: int, fails: bool) -> None:
    context = make_context(_executor("fail"), params={"until_attempt": 2.0}, attempt=attempt)

    if fails:
        with pytest.raises(ExecutorError):
            await _executor("fail").run(context)
    else:
        assert await _executor("fail").run(context) == {"attempt": attempt}
