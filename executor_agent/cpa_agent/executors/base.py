"""What an executor is: the context it runs in, the protocol it implements and the error it raises.

Nothing here knows about the stream; the runner builds the context and turns outcomes into results.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from cpa.common.v1 import todo_pb2

ProgressCallback = Callable[[float | None, str], Awaitable[None]]


async def _ignore_progress(percent: float | None, message: str) -> None:
    return None


@dataclass(kw_only=True)
class StopNotice:
    """Why the scheduler asked the attempt to stop (CancelAttempt.reason); set by the runner
    before it cancels the executor, None until then."""

    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExecutionContext:
    """One attempt as an executor sees it: what to do, with which values, and until when."""

    job_id: str
    task_id: str
    attempt: int
    todo: todo_pb2.ToDo
    params: dict[str, Any]
    inputs: dict[str, Any]
    deadline: datetime | None
    """The earlier of the task timeout and the assignment deadline (UTC), if any."""
    credential_refs: Mapping[str, str] = field(default_factory=dict)
    on_progress: ProgressCallback = field(default=_ignore_progress, repr=False)
    """Where progress goes; the runner sends it on the stream."""
    stop_notice: StopNotice = field(default_factory=StopNotice, repr=False)
    """Filled by the runner when the scheduler cancels the attempt; read `cancel_reason`."""

    @property
    def cancel_reason(self) -> str | None:
        """Why the scheduler cancelled this attempt, once it did (the reason its caller gave to
        CancelJob, or what stopped the job, e.g. "the job deadline passed"); None otherwise.
        Set before the executor's task is cancelled, so an executor can read it while it
        handles the CancelledError (to log it, or to clean up accordingly)."""
        return self.stop_notice.reason

    async def progress(self, percent: float | None, message: str) -> None:
        """Reports progress (0-100, None when unknown); best effort, never raises for the wire."""
        await self.on_progress(percent, message)


@runtime_checkable
class Executor(Protocol):
    """Runs one action; returns its outputs (a JSON object) or raises ExecutorError."""

    @property
    def action(self) -> str:
        """Action name as advertised in the hello ("echo", "click")."""
        ...

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        """Runs the attempt; must stop promptly when cancelled."""
        ...


class ExecutorError(Exception):
    """An application failure with a code the retry policy can match (`LOGIN_FAILED`)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.details: dict[str, Any] = dict(details or {})
