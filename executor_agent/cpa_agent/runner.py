"""Runs one attempt of a ToDo: builds its context, enforces its timeout, maps its outcome.

The runner never touches the stream: progress goes to a callback and the Result is returned.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from google.protobuf import json_format, struct_pb2

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2
from cpa_agent.executors.base import (
    ArtifactAccess,
    ArtifactInfo,
    ExecutionContext,
    Executor,
    ExecutorError,
    SecretProvider,
    StopNotice,
)
from cpa_agent.executors.params import INVALID_PARAMS, InvalidParams, parse_params
from cpa_agent.executors.registry import ExecutorRegistry, unavailable_reason
from cpa_agent.secrets import RecordingSecrets, scrub_json, scrub_text

logger = logging.getLogger(__name__)

# Error codes the agent itself puts in TaskError.code (executors choose their own).
TASK_TIMEOUT = "TASK_TIMEOUT"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
CANCELLED = "CANCELLED"
AGENT_SHUTDOWN = "AGENT_SHUTDOWN"
EXECUTOR_EXCEPTION = "EXECUTOR_EXCEPTION"
UNKNOWN_ACTION = "UNKNOWN_ACTION"
EXECUTOR_UNAVAILABLE = "EXECUTOR_UNAVAILABLE"
INVALID_OUTPUTS = "INVALID_OUTPUTS"
OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"

_ACTION_PREFIX = "ACTION_TYPE_"

ProgressSink = Callable[[executor_service_pb2.Progress], None]


class AttemptKey(NamedTuple):
    """Names one attempt of one task; the unit of assignment, fencing and reporting."""

    job_id: str
    task_id: str
    attempt: int

    @classmethod
    def from_proto(cls, message: executor_service_pb2.RunningAttempt) -> AttemptKey:
        return cls(message.job_id, message.task_id, message.attempt)

    @classmethod
    def of_assignment(cls, assignment: executor_service_pb2.Assignment) -> AttemptKey:
        return cls(assignment.job_id, assignment.todo.id, assignment.attempt)

    def to_proto(self) -> executor_service_pb2.RunningAttempt:
        return executor_service_pb2.RunningAttempt(
            job_id=self.job_id, task_id=self.task_id, attempt=self.attempt
        )

    def __str__(self) -> str:
        return f"{self.job_id}/{self.task_id}#{self.attempt}"


class StopReason(enum.Enum):
    """Why the agent stops an attempt before it ends on its own."""

    CANCELLED = "cancelled"
    """The server asked (CancelAttempt): reported as cancelled, not retryable."""
    SHUTDOWN = "shutdown"
    """The agent drains and time ran out: reported as AGENT_SHUTDOWN, retryable (handed back)."""
    DISCARDED = "discarded"
    """The server no longer considers the attempt current: stopped and never reported."""


def action_name(todo: todo_pb2.ToDo) -> str:
    """The registry key of a ToDo's action: custom_action, or the built-in name ("open_app")."""
    if todo.action == todo_pb2.ACTION_TYPE_CUSTOM:
        return todo.custom_action
    if todo.action == todo_pb2.ACTION_TYPE_UNSPECIFIED:
        return ""
    try:
        return todo_pb2.ActionType.Name(todo.action).removeprefix(_ACTION_PREFIX).lower()
    except ValueError:
        return ""


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A JSON object as plain Python; numbers come back as floats (JSON has one number type)."""
    return json_format.MessageToDict(struct)


def _error(
    code: str,
    message: str,
    *,
    retryable: bool,
    reason: error_pb2.ErrorReason.ValueType = error_pb2.ERROR_REASON_UNSPECIFIED,
    details: Mapping[str, Any] | None = None,
) -> error_pb2.TaskError:
    error = error_pb2.TaskError(code=code, message=message, retryable=retryable, reason=reason)
    if details:
        try:
            error.details.update(dict(details))
        except (ValueError, TypeError):
            logger.warning("dropping error details of %s: not representable as JSON", code)
            error.ClearField("details")
    return error


def result_too_large(
    result: executor_service_pb2.Result, *, size: int, limit: int
) -> executor_service_pb2.Result:
    """What the agent reports instead of a result too large to send: the attempt failed with
    OUTPUT_TOO_LARGE, not retryable (the same action makes the same output). Outputs, error
    details and artifacts are dropped; the message says the size and the limit."""
    if result.WhichOneof("outcome") == "error":
        what = f"error {result.error.code[:64]!r} with its details"
    else:
        what = "outputs"
    message = (
        f"the result of attempt {result.attempt} ({what} and artifacts) is {size} bytes; the "
        f"server takes at most {limit} bytes from an agent (Welcome.max_report_bytes)"
    )
    return executor_service_pb2.Result(
        job_id=result.job_id,
        task_id=result.task_id,
        attempt=result.attempt,
        error=_error(
            OUTPUT_TOO_LARGE,
            message,
            retryable=False,
            reason=error_pb2.ERROR_REASON_OUTPUT_TOO_LARGE,
        ),
        cancelled=result.cancelled,
    )


class AttemptRunner:
    """One attempt: `run()` executes it once and returns its Result; `stop()` ends it early."""

    def __init__(
        self,
        *,
        assignment: executor_service_pb2.Assignment,
        registry: ExecutorRegistry,
        on_progress: ProgressSink,
        stop_grace_s: float = 5.0,
        secrets: SecretProvider | None = None,
        artifacts: ArtifactAccess | None = None,
    ) -> None:
        self.key = AttemptKey.of_assignment(assignment)
        # Every secret value the attempt resolves, scrubbed out of all it reports.
        self._secret_values: set[str] = set()
        self._secrets = None if secrets is None else RecordingSecrets(secrets, self._secret_values)
        self._artifacts = (
            None if artifacts is None else _ScrubbedArtifacts(artifacts, self._secret_values)
        )
        self.assignment = assignment
        self.action = action_name(assignment.todo)
        self._registry = registry
        self._on_progress = on_progress
        self._stop_grace_s = stop_grace_s
        self._stop: tuple[StopReason, str] | None = None
        self._stop_requested = asyncio.Event()
        self._stop_notice = StopNotice()

    @property
    def stop_reason(self) -> StopReason | None:
        return None if self._stop is None else self._stop[0]

    def stop(self, reason: StopReason, message: str) -> None:
        """Ends the executor (see _end_work); the first reason given decides what the Result
        says."""
        if self._stop is None:
            self._stop = (reason, message)
            if reason is StopReason.CANCELLED:
                self._stop_notice.reason = message
        self._stop_requested.set()

    async def run(self) -> executor_service_pb2.Result:
        """Runs the attempt once. Raises CancelledError only when the calling task is cancelled."""
        executor = self._registry.get(self.action)
        if executor is None:
            logger.error("attempt %s: no executor for action %r", self.key, self.action)
            return self._result(
                error=_error(
                    UNKNOWN_ACTION,
                    f"this agent has no executor for action {self.action!r}",
                    retryable=False,
                )
            )
        if (why := unavailable_reason(executor)) is not None:
            # Not advertised (see ExecutorRegistry.advertised_actions), yet assigned: the server
            # had an older hello. Another agent may have what this one lacks.
            logger.warning("attempt %s: %r is unavailable here: %s", self.key, self.action, why)
            return self._result(
                error=_error(
                    EXECUTOR_UNAVAILABLE,
                    f"action {self.action!r} is unavailable on this agent: {why}",
                    retryable=True,
                )
            )
        if self._stop is not None:
            return self._stopped_result(*self._stop)
        params = struct_to_dict(self.assignment.todo.params)
        parsed_params: Any = None
        model = getattr(executor, "params_model", None)
        if model is not None:
            try:
                parsed_params = parse_params(model, self.assignment.todo, params)
            except InvalidParams as invalid:
                logger.info("attempt %s: params refused at %s", self.key, invalid.field)
                return self._result(
                    error=_error(
                        INVALID_PARAMS,
                        f"invalid params for {self.action!r}: {invalid}",
                        retryable=False,
                        reason=error_pb2.ERROR_REASON_INVALID_PARAMS,
                        details=invalid.details(),
                    )
                )
        now = datetime.now(UTC)
        deadline, stopped_at = self._deadline(now)
        extras: dict[str, Any] = {}
        if self._secrets is not None:
            extras["secrets"] = self._secrets
        if self._artifacts is not None:
            extras["artifacts"] = self._artifacts
        ctx = ExecutionContext(
            job_id=self.key.job_id,
            task_id=self.key.task_id,
            attempt=self.key.attempt,
            todo=self.assignment.todo,
            params=params,
            inputs=struct_to_dict(self.assignment.inputs),
            deadline=deadline,
            credential_refs=dict(self.assignment.credential_refs),
            on_progress=self._progress,
            stop_notice=self._stop_notice,
            parsed_params=parsed_params,
            **extras,
            session=self.assignment.todo.session,
        )
        timeout_s = None if deadline is None else max(0.0, (deadline - now).total_seconds())
        logger.info("attempt %s: running %r", self.key, self.action)
        work = asyncio.create_task(_run_and_verify(executor, ctx), name=f"attempt {self.key}")
        stop_requested = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait(
                (work, stop_requested), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            stop_requested.cancel()
        if not work.done():
            # The timeout passed, or a stop came: end the action and report without it.
            stop = self._stop
            await self._end_work(work)
            if stop is not None:
                return self._stopped_result(*stop)
            assert stopped_at is not None  # only a bound ends the wait without a stop
            logger.info("attempt %s: %s", self.key, stopped_at.message)
            return self._result(error=stopped_at)
        try:
            outputs = work.result()
        except ExecutorError as error:
            logger.info(
                "attempt %s: failed with %s", self.key, scrub_text(error.code, self._secret_values)
            )
            return self._result(
                error=_error(
                    error.code, error.message, retryable=error.retryable, details=error.details
                )
            )
        except asyncio.CancelledError as error:
            if self._stop is None:
                # The executor raised CancelledError without being asked to stop.
                return self._exception_result(error)
            return self._stopped_result(*self._stop)
        except Exception as error:
            return self._exception_result(error)
        return self._outputs_result(outputs)

    async def _end_work(self, work: asyncio.Task[dict[str, Any]]) -> None:
        """Cancel the action and give it `stop_grace_s` to end; one that ignores the cancel is
        abandoned (it may still run), so that the attempt's outcome is reported all the same."""
        work.cancel()
        done, _ = await asyncio.wait((work,), timeout=self._stop_grace_s)
        if not done:
            logger.warning(
                "attempt %s: %r ignored the stop for %gs; reporting without it (it may still run)",
                self.key,
                self.action,
                self._stop_grace_s,
            )
            # Retrieve its outcome whenever it ends, so that nothing is logged as never retrieved.
            work.add_done_callback(lambda task: task.cancelled() or task.exception())

    def _deadline(self, now: datetime) -> tuple[datetime | None, error_pb2.TaskError | None]:
        """The earlier of the task timeout and the assignment deadline (the job's), and the
        error an attempt stopped there reports: TASK_TIMEOUT (retryable) for the timeout,
        JOB_DEADLINE_EXCEEDED (not retryable: the job is over) for the deadline."""
        candidates: list[tuple[datetime, error_pb2.TaskError]] = []
        todo = self.assignment.todo
        # A zero timeout is an unset one: no attempt could ever meet it.
        if todo.HasField("timeout") and todo.timeout.ToTimedelta() > timedelta(0):
            timeout = todo.timeout.ToTimedelta()
            cause = f"attempt ran longer than its timeout of {timeout.total_seconds():g}s"
            error = _error(
                TASK_TIMEOUT, cause, retryable=True, reason=error_pb2.ERROR_REASON_TASK_TIMEOUT
            )
            candidates.append((now + timeout, error))
        if self.assignment.HasField("deadline"):
            deadline = self.assignment.deadline.ToDatetime(tzinfo=UTC)
            error = _error(
                DEADLINE_EXCEEDED,
                f"attempt stopped at the job deadline {deadline.isoformat()}",
                retryable=False,
                reason=error_pb2.ERROR_REASON_JOB_DEADLINE_EXCEEDED,
            )
            candidates.append((deadline, error))
        if not candidates:
            return None, None
        return min(candidates, key=lambda candidate: candidate[0])

    async def _progress(self, percent: float | None, message: str) -> None:
        if self._stop is not None:
            return
        progress = executor_service_pb2.Progress(
            job_id=self.key.job_id,
            task_id=self.key.task_id,
            attempt=self.key.attempt,
            message=scrub_text(message, self._secret_values),
        )
        # Unset means "not known" (the field is optional in the contract).
        if percent is not None:
            progress.percent = min(100.0, max(0.0, percent))
        self._on_progress(progress)

    def _result(
        self,
        *,
        error: error_pb2.TaskError | None = None,
        outputs: struct_pb2.Struct | None = None,
        cancelled: bool = False,
    ) -> executor_service_pb2.Result:
        if self._secret_values and error is not None:
            error.code = scrub_text(error.code, self._secret_values)
            error.message = scrub_text(error.message, self._secret_values)
            if error.HasField("details"):
                details = scrub_json(struct_to_dict(error.details), self._secret_values)
                error.details.Clear()
                error.details.update(details)
        return executor_service_pb2.Result(
            job_id=self.key.job_id,
            task_id=self.key.task_id,
            attempt=self.key.attempt,
            error=error,
            outputs=outputs,
            cancelled=cancelled,
        )

    def _outputs_result(self, outputs: object) -> executor_service_pb2.Result:
        if not isinstance(outputs, dict):
            return self._result(
                error=_error(
                    INVALID_OUTPUTS,
                    f"{self.action!r} returned {type(outputs).__name__}, not a JSON object",
                    retryable=False,
                )
            )
        struct = struct_pb2.Struct()
        try:
            struct.update(scrub_json(outputs, self._secret_values))
        except (ValueError, TypeError) as error:
            return self._result(
                error=_error(
                    INVALID_OUTPUTS,
                    f"outputs of {self.action!r} are not representable as JSON: {error}",
                    retryable=False,
                )
            )
        logger.info("attempt %s: succeeded", self.key)
        return self._result(outputs=struct)

    def _stopped_result(self, reason: StopReason, message: str) -> executor_service_pb2.Result:
        logger.info("attempt %s: stopped (%s): %s", self.key, reason.value, message)
        if reason is StopReason.SHUTDOWN:
            return self._result(
                error=_error(
                    AGENT_SHUTDOWN,
                    message,
                    retryable=True,
                    reason=error_pb2.ERROR_REASON_AGENT_DRAINING,
                )
            )
        return self._result(
            error=_error(CANCELLED, message, retryable=False),
            cancelled=True,
        )

    def _exception_result(self, error: BaseException) -> executor_service_pb2.Result:
        # The traceback goes to the log only: the wire carries no internals. Formatted here and
        # scrubbed, since an exception's text may hold a secret the executor resolved.
        trace = scrub_text("".join(traceback.format_exception(error)), self._secret_values)
        logger.error("attempt %s: executor %r raised\n%s", self.key, self.action, trace)
        return self._result(
            error=_error(EXECUTOR_EXCEPTION, f"{type(error).__name__}: {error}", retryable=True)
        )


async def _run_and_verify(executor: Executor, ctx: ExecutionContext) -> dict[str, Any]:
    """`run`, then the executor's optional `verify(ctx, outputs)`: one unit under the attempt's
    timeout and cancellation. An ExecutorError from verify fails the attempt like one from run
    (its own code and retryable flag); outputs are reported only when both passed."""
    outputs = await executor.run(ctx)
    verify = getattr(executor, "verify", None)
    if verify is not None:
        await verify(ctx, outputs)
    return outputs


class _ScrubbedArtifacts:
    """The attempt's artifact access with secret values scrubbed out of artifact names (the
    bytes are the executor's business: a screenshot must not show a typed password)."""

    def __init__(self, inner: ArtifactAccess, secret_values: set[str]) -> None:
        self._inner = inner
        self._secret_values = secret_values

    async def save(self, name: str, media_type: str, data: bytes) -> ArtifactInfo:
        return await self._inner.save(scrub_text(name, self._secret_values), media_type, data)

    async def read_input(self, input_name: str) -> tuple[ArtifactInfo, bytes]:
        return await self._inner.read_input(input_name)
