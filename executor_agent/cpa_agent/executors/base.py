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
class ArtifactInfo:
    """A file an attempt stored (a screenshot, a download) or takes as input, as the scheduler
    lists it on the task (cpa.common.v1.Artifact)."""

    name: str
    media_type: str
    size_bytes: int
    sha256: str
    """Lower-case hex SHA-256 of the content."""
    artifact_id: str = ""
    """Server-assigned id; empty until the scheduler stored it."""


class ArtifactAccess(Protocol):
    """How an executor stores the files it produces and reads the artifacts its inputs name
    (ToDo.inputs with artifact_name). The agent's implementation uploads to the scheduler; tests
    of an executor use cpa_agent.executors.testing.MemoryArtifacts."""

    async def save(self, name: str, media_type: str, data: bytes) -> ArtifactInfo:
        """Stores `data` as an artifact of this attempt; the name is unique within the task
        (a second save of a name replaces the first). Raises ExecutorError when it cannot."""
        ...

    async def read_input(self, input_name: str) -> tuple[ArtifactInfo, bytes]:
        """The artifact bound to input `input_name`, its bytes checked against its sha256.
        Raises ExecutorError when there is no such input or the bytes do not match."""
        ...


class SecretProvider(Protocol):
    """Resolves credential references (ToDo.credential_refs values) to secret values, on the
    agent only: the scheduler sees references, never values."""

    async def get(self, ref: str) -> str:
        """The secret `ref` names; raises KeyError when it has none."""
        ...


class _NoArtifacts:
    async def save(self, name: str, media_type: str, data: bytes) -> ArtifactInfo:
        raise ExecutorError(
            "ARTIFACTS_UNAVAILABLE", "this context stores no artifacts", retryable=False
        )

    async def read_input(self, input_name: str) -> tuple[ArtifactInfo, bytes]:
        raise ExecutorError(
            "ARTIFACTS_UNAVAILABLE", f"no artifact input {input_name!r} here", retryable=False
        )


class _NoSecrets:
    async def get(self, ref: str) -> str:
        raise KeyError(ref)


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
    session: str = ""
    """The task's session key: the tasks of one job with the same key run on one agent and share
    its state there (one browser context). Empty: the task belongs to no session."""
    parsed_params: Any = None
    """`params` validated by the executor's `params_model` (an instance of it); None without one."""
    artifacts: ArtifactAccess = field(default_factory=_NoArtifacts, repr=False)
    """Where the attempt's files go, and where its artifact inputs come from."""
    secrets: SecretProvider = field(default_factory=_NoSecrets, repr=False)
    """The agent's secret provider; use `secret(purpose)`."""

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

    async def secret(self, purpose: str) -> str:
        """The secret value for `purpose`: credential_refs[purpose] resolved by the agent's
        provider. Never put it in outputs, errors, progress or logs. Raises ExecutorError
        CREDENTIAL_NOT_FOUND (not retryable) naming the purpose and reference, not the value."""
        ref = self.credential_refs.get(purpose)
        if ref is None:
            raise ExecutorError(
                "CREDENTIAL_NOT_FOUND",
                f"the task names no credential for {purpose!r} (ToDo.credential_refs)",
                retryable=False,
            )
        try:
            return await self.secrets.get(ref)
        except KeyError:
            raise ExecutorError(
                "CREDENTIAL_NOT_FOUND",
                f"this agent has no secret for reference {ref!r} (purpose {purpose!r})",
                retryable=False,
            ) from None


@runtime_checkable
class Executor(Protocol):
    """Runs one action; returns its outputs (a JSON object) or raises ExecutorError.

    Optional members, looked up with getattr by the agent:
    - `params_model`: a pydantic model of the params; the runner validates params against it
      before `run` (a failure is refused, not retryable, naming the field) and puts the instance
      in `ctx.parsed_params`. For a built-in UI action (open_app, click, type, wait_for, uia)
      fields named `selector` and `text` read ToDo.selector and ToDo.text (see
      cpa_agent.executors.params.model_input).
    - `capabilities`: extra capabilities advertised in the hello ("browser:chromium").
    - `async verify(ctx, outputs) -> None`: runs after `run`, within the same attempt (the same
      timeout and cancellation); raises ExecutorError when the action did not have its effect,
      which fails the attempt with that error (outputs are not reported).
    - `unavailable_reason() -> str | None`: why the executor cannot run now (None: it can);
      checked at every hello, an unavailable action is not advertised.
    - `async close_session(job_id, session) -> None`: the session ended (its last task, the job,
      or the lease on it); release what it holds (a browser context).
    - `async aclose() -> None`: the agent stops; release everything.
    """

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
