"""Built-in executors for tests and demos: noop, echo, wait and fail.

Real actions (browser, mail, desktop) live in their own modules and register the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from cpa_agent.executors.base import ExecutionContext, ExecutorError
from cpa_agent.executors.registry import ExecutorRegistry

INVALID_PARAMS = "INVALID_PARAMS"
_WAIT_PROGRESS_INTERVAL_S = 1.0


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


class WaitExecutor:
    """Sleeps params["seconds"], reporting progress about every second; stops at once on cancel,
    unless params["ignore_cancel"] is true: then it plays an action stuck in a call it cannot
    interrupt, and waits out its time whatever happens."""

    action = "wait"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        seconds = ctx.params.get("seconds")
        # bool is an int subclass; `true` is not a duration.
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ExecutorError(
                INVALID_PARAMS,
                f"params.seconds must be a number >= 0, got {seconds!r}",
                retryable=False,
            )
        ignore_cancel = ctx.params.get("ignore_cancel", False)
        if not isinstance(ignore_cancel, bool):
            raise ExecutorError(
                INVALID_PARAMS,
                f"params.ignore_cancel must be true or false, got {ignore_cancel!r}",
                retryable=False,
            )
        total_s = float(seconds)
        if ignore_cancel:
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


class FailExecutor:
    """Fails with params code/message/retryable; with until_attempt N, only attempts 1..N fail."""

    action = "fail"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        until_attempt = ctx.params.get("until_attempt")
        if until_attempt is not None and (
            isinstance(until_attempt, bool) or not isinstance(until_attempt, int | float)
        ):
            raise ExecutorError(
                INVALID_PARAMS,
                f"params.until_attempt must be a number, got {until_attempt!r}",
                retryable=False,
            )
        if until_attempt is not None and ctx.attempt > until_attempt:
            return {"attempt": ctx.attempt}
        raise ExecutorError(
            str(ctx.params.get("code", "FAILED")),
            str(ctx.params.get("message", "failed on purpose")),
            retryable=bool(ctx.params.get("retryable", False)),
        )


def builtin_registry() -> ExecutorRegistry:
    """A registry with noop, echo, wait and fail."""
    return ExecutorRegistry(
        executors=(NoopExecutor(), EchoExecutor(), WaitExecutor(), FailExecutor())
    )
