"""file_drop: writes a text file into a drop directory on the agent's machine, keeps a copy as
an artifact when asked, and verifies that the file is there with the bytes it wrote.

The example of docs/EXECUTOR_GUIDE.md; tests/e2e/test_executor_guide.py keeps it honest.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cpa_agent import ExecutionContext, Executor, ExecutorError, ExecutorUnavailable

DROP_DIR_ENV = "CPA_EXAMPLE_DROP_DIR"
_PROGRESS_EVERY_LINES = 1000


class DropParams(BaseModel):
    """ToDo.params of file_drop; the runner refuses params that do not fit, naming the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")
    """File name inside the drop directory: no path, no leading dot."""
    lines: list[str] = Field(min_length=1, max_length=100_000)
    sign: bool = False
    """Append an HMAC-SHA256 of the content made with the "signing" credential."""
    keep_copy: bool = False
    """Also store the file as an artifact of the task."""


class FileDrop:
    action = "file_drop"
    params_model = DropParams
    capabilities = ("drop:local",)

    def __init__(self, root: Path) -> None:
        self._root = root

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        params: DropParams = ctx.parsed_params
        body = ""
        for number, line in enumerate(params.lines, 1):
            body += line + "\n"
            if number % _PROGRESS_EVERY_LINES == 0:
                # Also a cancellation point: the runner cancels the task at an await.
                await ctx.progress(100.0 * number / len(params.lines), f"{number} lines")
        if params.sign:
            key = await ctx.secret("signing")  # never put `key` in outputs, errors or logs
            digest = hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()
            body += f"signature: {digest}\n"
        data = body.encode()
        target = self._root / params.name
        await asyncio.to_thread(_write_once, target, data)
        if params.keep_copy:
            await ctx.artifacts.save(params.name, "text/plain", data)
        return {
            "path": str(target),
            "size_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    async def verify(self, ctx: ExecutionContext, outputs: dict[str, Any]) -> None:
        """The file is there, with the bytes `run` wrote (another process may have moved it)."""
        try:
            data = await asyncio.to_thread(Path(outputs["path"]).read_bytes)
        except FileNotFoundError:
            raise ExecutorError(
                "DROP_MISSING", f"{outputs['path']} is gone after writing", retryable=True
            ) from None
        if hashlib.sha256(data).hexdigest() != outputs["sha256"]:
            raise ExecutorError(
                "DROP_CHANGED", f"{outputs['path']} changed after writing", retryable=True
            )


def _write_once(target: Path, data: bytes) -> None:
    """Writes `data` to `target` atomically. An attempt may run again (a lost agent, a retry):
    the same content already there is success, other content a failure no retry mends."""
    if target.exists():
        if target.read_bytes() == data:
            return
        raise ExecutorError(
            "DROP_EXISTS", f"{target.name} exists with other content", retryable=False
        )
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    partial.replace(target)


def executors() -> Iterable[Executor]:
    """The `cpa.executors` entry point: file_drop, when its drop directory is configured."""
    root = os.environ.get(DROP_DIR_ENV)
    if not root:
        raise ExecutorUnavailable(f"{DROP_DIR_ENV} is not set")
    path = Path(root)
    if not path.is_dir():
        raise ExecutorUnavailable(f"{DROP_DIR_ENV}={root} is not a directory")
    return [FileDrop(path)]
