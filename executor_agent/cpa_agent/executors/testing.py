"""Stand-ins for the scheduler's side of an ExecutionContext, to test an executor on its own:
artifacts kept in memory and secrets from a dict, and `run_alone`, which validates params, runs
and verifies as the agent's runner does. The agent itself never uses them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from cpa.common.v1 import todo_pb2
from cpa_agent.executors.base import (
    ArtifactAccess,
    ArtifactInfo,
    ExecutionContext,
    Executor,
    ExecutorError,
    ProgressCallback,
    SecretProvider,
)
from cpa_agent.executors.params import INVALID_PARAMS, InvalidParams, parse_params


class MemoryArtifacts:
    """Artifacts in a dict: `saved` holds what the executor stored, `inputs` what it may read."""

    def __init__(self, inputs: Mapping[str, tuple[str, str, bytes]] | None = None) -> None:
        self.saved: dict[str, tuple[ArtifactInfo, bytes]] = {}
        self._inputs = dict(inputs or {})
        """input name -> (artifact name, media type, bytes)"""

    async def save(self, name: str, media_type: str, data: bytes) -> ArtifactInfo:
        info = _info(name, media_type, data)
        self.saved[name] = (info, data)
        return info

    async def read_input(self, input_name: str) -> tuple[ArtifactInfo, bytes]:
        if input_name not in self._inputs:
            raise ExecutorError(
                "INPUT_NOT_FOUND", f"no artifact input {input_name!r}", retryable=False
            )
        name, media_type, data = self._inputs[input_name]
        return _info(name, media_type, data), data


class StaticSecrets:
    """Secrets from a dict of reference -> value."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    async def get(self, ref: str) -> str:
        return self._values[ref]


def _info(name: str, media_type: str, data: bytes) -> ArtifactInfo:
    return ArtifactInfo(
        name=name,
        media_type=media_type,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


async def _no_progress(percent: float | None, message: str) -> None:
    return None


def make_context(
    executor: Executor,
    *,
    params: Mapping[str, Any] | None = None,
    todo: todo_pb2.ToDo | None = None,
    attempt: int = 1,
    inputs: Mapping[str, Any] | None = None,
    credential_refs: Mapping[str, str] | None = None,
    secrets: SecretProvider | None = None,
    artifacts: ArtifactAccess | None = None,
    session: str = "",
    deadline: datetime | None = None,
    on_progress: ProgressCallback = _no_progress,
) -> ExecutionContext:
    """The context the runner would build for this executor: params validated with its
    `params_model` (InvalidParams when they do not fit), the instance in `parsed_params`.
    `todo` defaults to a custom-action ToDo of the executor's action carrying `params`."""
    if todo is None:
        todo = todo_pb2.ToDo(
            id="t1", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action=executor.action
        )
        if params:
            todo.params.update(dict(params))
    plain = dict(params) if params is not None else json_format.MessageToDict(todo.params)
    model = getattr(executor, "params_model", None)
    fields: dict[str, Any] = {}
    if secrets is not None:
        fields["secrets"] = secrets
    if artifacts is not None:
        fields["artifacts"] = artifacts
    return ExecutionContext(
        job_id="job-1",
        task_id=todo.id or "t1",
        attempt=attempt,
        todo=todo,
        params=plain,
        inputs=dict(inputs or {}),
        deadline=deadline,
        credential_refs=dict(credential_refs or {}),
        on_progress=on_progress,
        session=session,
        parsed_params=None if model is None else parse_params(model, todo, plain),
        **fields,
    )


async def run_alone(executor: Executor, **context: Any) -> dict[str, Any]:
    """Runs the executor as one attempt would (params checked, `run`, then `verify` when it has
    one) without timeout, scrubbing or a stream; keyword arguments go to make_context. Params
    that do not fit raise ExecutorError INVALID_PARAMS, not retryable, as the runner reports."""
    try:
        ctx = make_context(executor, **context)
    except InvalidParams as invalid:
        raise ExecutorError(
            INVALID_PARAMS, str(invalid), retryable=False, details=invalid.details()
        ) from None
    outputs = await executor.run(ctx)
    verify = getattr(executor, "verify", None)
    if verify is not None:
        await verify(ctx, outputs)
    return outputs
