"""An agent that stops calls `aclose()` of its executors: after a drain, when cancelled, each
executor once, a failing or hanging one never keeping the others open or the agent running."""

from __future__ import annotations

import asyncio
from typing import Any

from cpa_agent import ExecutionContext, ExecutorRegistry, builtin_registry
from cpa_agent.agent import close_executors

from .conftest import ConnectAgent


class ClosingExecutor:
    """An executor that records its aclose() calls; `hang` never lets one return, `fail` raises."""

    def __init__(self, action: str, *, fail: bool = False, hang: bool = False) -> None:
        self.action = action
        self.closes = 0
        self._fail = fail
        self._hang = hang

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        self.closes += 1
        if self._fail:
            raise RuntimeError("the resource would not close")
        if self._hang:
            await asyncio.Event().wait()


def _registry(*executors: ClosingExecutor) -> ExecutorRegistry:
    registry = builtin_registry()
    for executor in executors:
        registry.register(executor)
    return registry


async def test_a_drained_agent_closes_every_executor_once(connect_agent: ConnectAgent) -> None:
    first, failing = ClosingExecutor("one"), ClosingExecutor("two", fail=True)
    last = ClosingExecutor("three")
    running, session = await connect_agent(registry=_registry(first, failing, last))
    await session.expect("credit")
    assert (first.closes, failing.closes, last.closes) == (0, 0, 0)

    running.agent.request_drain("maintenance")
    await session.expect("drain")
    await running.stopped()

    # The failing one was called and did not keep the one after it open.
    assert (first.closes, failing.closes, last.closes) == (1, 1, 1)


async def test_a_cancelled_agent_closes_its_executors(connect_agent: ConnectAgent) -> None:
    executor = ClosingExecutor("one")
    running, session = await connect_agent(registry=_registry(executor))
    await session.expect("credit")

    running.task.cancel()
    await asyncio.wait([running.task], timeout=5.0)

    assert running.task.done()
    assert executor.closes == 1


async def test_a_hanging_aclose_is_given_up_after_its_timeout() -> None:
    hanging, after = ClosingExecutor("one", hang=True), ClosingExecutor("two")
    await asyncio.wait_for(close_executors(_registry(hanging, after), timeout_s=0.05), 5.0)
    assert (hanging.closes, after.closes) == (1, 1)
