"""Built-in executors for tests and demos: noop, echo, wait and fail.

Real actions (browser, mail) live in their own packages; all of them, these included, reach the
agent through the `cpa.executors` entry-point group (see discovery.py): `executors()` is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat

from cpa_agent.executors.base import ExecutionContext, Executor, ExecutorError
from cpa_agent.executors.params import INVALID_PARAMS
from cpa_agent.executors.registry import ExecutorRegistry

__all__ = ["INVALID_PARAMS", "builtin_registry", "executors"]

_WAIT_PROGRESS_INTERVAL_S = 1.0
# Strict: JSON has no "5" seconds and no `true` seconds (bool is an int in Python, not here).
# One type, not a union: a union's errors carry its members' names in their path.
_Number = StrictFloat


class NoopExecutor:
    """Does nothing and succeeds with no outputs."""

    action = "noop"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {}


class EchoExecutor:
    """Returns its params as outputs, plus the resolved inputs under "inputs" when there are any."""

    action = "echo"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        outputs = dict(ctx.params)
        if ctx.inputs:
            outputs["inputs"] = dict(ctx.inputs)
        return outputs


class WaitParams(BaseModel):
    """Params of `wait`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: _Number = Field(ge=0, allow_inf_nan=False)
    ignore_cancel: StrictBool = False


class WaitExecutor:
    """Sleeps params["seconds"], reporting progress about every second; stops at once on cancel,
    unless params["ignore_cancel"] is true: then it plays an action stuck in a call it cannot
    interrupt, and waits out its time whatever happens."""

    action = "wait"
    params_model = WaitParams

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        params: WaitParams = ctx.parsed_params
        total_s = float(params.seconds)
        if params.ignore_cancel:
            return await _wait_out(total_s)
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        await ctx.progress(0.0, f"waiting {total_s:g}s")
        while (elapsed_s := loop.time() - started_s) < total_s:
            await asyncio.sleep(min(_WAIT_PROGRESS_INTERVAL_S, total_s - elapsed_s))
            elapsed_s = min(loop.time() - started_s, total_s)
            if elapsed_s < total_s:
                await ctx.progress(100.0 * elapsed_s / total_s, f"waited {elapsed_s:.1f}s")
        return {"waited_s": total_s}


async def _wait_out(total_s: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    until_s = loop.time() + total_s
    while (left_s := until_s - loop.time()) > 0:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(left_s)
    return {"waited_s": total_s}


class FailParams(BaseModel):
    """Params of `fail`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(default="FAILED", min_length=1)
    message: str = "failed on purpose"
    retryable: StrictBool = False
    until_attempt: _Number | None = None
    """Attempts after this one succeed (with outputs {"attempt": n})."""


class FailExecutor:
    """Fails with params code/message/retryable; with until_attempt N, only attempts 1..N fail."""

    action = "fail"
    params_model = FailParams

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        params: FailParams = ctx.parsed_params
        if params.until_attempt is not None and ctx.attempt > params.until_attempt:
            return {"attempt": ctx.attempt}
        raise ExecutorError(params.code, params.message, retryable=params.retryable)


def executors() -> Iterable[Executor]:
    """The `builtin` entry point of the `cpa.executors` group: noop, echo, wait and fail."""
    return (NoopExecutor(), EchoExecutor(), WaitExecutor(), FailExecutor())


def builtin_registry() -> ExecutorRegistry:
    """A registry with noop, echo, wait and fail (tests and embedding; the agent's own registry
    comes from the entry points, see discovery.py)."""
    return ExecutorRegistry(executors=executors())
