"""params_model and verify as the runner applies them: refused params never reach `run`, the
instance reaches ctx.parsed_params, and verify is part of the attempt (its error, its timeout)."""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent import ExecutionContext, ExecutorError, ExecutorRegistry
from cpa_agent.runner import AttemptRunner

from .scripted_scheduler import todo


class _Selector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    css: str = Field(min_length=1)


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: str
    selector: _Selector | None = None


class _StepsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[_Step] = Field(min_length=1)


class _Steps:
    """Counts its runs; outputs the ops it was given, from the parsed params."""

    action = "steps"
    params_model = _StepsParams

    def __init__(self) -> None:
        self.runs = 0
        self.parsed: Any = None

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        self.runs += 1
        self.parsed = ctx.parsed_params
        return {"ops": [step.op for step in ctx.parsed_params.steps]}


class _ClickParams(BaseModel):
    """A built-in UI action's model reads ToDo.selector and ToDo.text besides params."""

    selector: dict[str, str]
    text: str = ""
    delay_ms: int = 0


class _Click:
    action = "click"
    params_model = _ClickParams

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        return ctx.parsed_params.model_dump()  # type: ignore[no-any-return]


class _Verified:
    """`run` claims success; `verify` checks the claim (params.effect) and may hang."""

    action = "verified"

    def __init__(self) -> None:
        self.verified_outputs: dict[str, Any] | None = None

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {"claimed": True}

    async def verify(self, ctx: ExecutionContext, outputs: dict[str, Any]) -> None:
        self.verified_outputs = outputs
        if ctx.params.get("hang"):
            await asyncio.Event().wait()
        if not ctx.params.get("effect"):
            raise ExecutorError("NOT_SAVED", "the record is not in the list", retryable=True)


async def _run(executor: Any, message: todo_pb2.ToDo) -> pb.Result:
    runner = AttemptRunner(
        assignment=pb.Assignment(job_id="job-1", todo=message, attempt=1),
        registry=ExecutorRegistry(executors=[executor]),
        on_progress=lambda progress: None,
    )
    return await asyncio.wait_for(runner.run(), 10)


async def test_params_the_model_refuses_fail_without_running_naming_the_field() -> None:
    executor = _Steps()
    params = {"steps": [{"op": "goto"}, {"op": "click"}, {"op": "click", "selector": {"x": 1}}]}

    result = await _run(executor, todo("steps", params=params))

    assert executor.runs == 0
    error = result.error
    assert error.code == "INVALID_PARAMS"
    assert error.reason == error_pb2.ERROR_REASON_INVALID_PARAMS
    assert not error.retryable
    details = json_format.MessageToDict(error.details)
    assert details["field"] == "params.steps[2].selector.css"
    assert details["message"] == "Field required"
    fields = [problem["field"] for problem in details["errors"]]
    assert fields == ["params.steps[2].selector.css", "params.steps[2].selector.x"]
    assert "params.steps[2].selector.css: Field required (and 1 more)" in error.message


async def test_valid_params_reach_the_executor_as_the_model_instance() -> None:
    executor = _Steps()

    result = await _run(executor, todo("steps", params={"steps": [{"op": "goto"}]}))

    assert result.WhichOneof("outcome") == "outputs"
    assert json_format.MessageToDict(result.outputs)["ops"] == ["goto"]
    assert isinstance(executor.parsed, _StepsParams)


async def test_a_ui_actions_model_reads_selector_and_text_from_the_todo() -> None:
    message = todo_pb2.ToDo(
        id="t1",
        action=todo_pb2.ACTION_TYPE_CLICK,
        selector=todo_pb2.Selector(strategy=todo_pb2.SELECTOR_STRATEGY_CSS, value="#save"),
        text="hello",
    )
    message.params.update({"delay_ms": 5})

    result = await _run(_Click(), message)

    assert result.WhichOneof("outcome") == "outputs", result.error
    outputs = json_format.MessageToDict(result.outputs)
    assert outputs["selector"] == {"strategy": "SELECTOR_STRATEGY_CSS", "value": "#save"}
    assert (outputs["text"], outputs["delay_ms"]) == ("hello", 5)


async def test_a_ui_action_without_its_selector_is_refused_naming_the_todo_field() -> None:
    message = todo_pb2.ToDo(id="t1", action=todo_pb2.ACTION_TYPE_CLICK)

    result = await _run(_Click(), message)

    assert result.error.code == "INVALID_PARAMS"
    assert json_format.MessageToDict(result.error.details)["field"] == "selector"


async def test_a_failing_verify_fails_the_attempt_with_its_own_error() -> None:
    executor = _Verified()

    result = await _run(executor, todo("verified", params={"effect": False}))

    assert executor.verified_outputs == {"claimed": True}
    assert result.WhichOneof("outcome") == "error"
    assert (result.error.code, result.error.retryable) == ("NOT_SAVED", True)


async def test_a_passing_verify_lets_the_outputs_through() -> None:
    result = await _run(_Verified(), todo("verified", params={"effect": True}))

    assert json_format.MessageToDict(result.outputs) == {"claimed": True}


async def test_verify_runs_under_the_attempts_timeout() -> None:
    result = await _run(_Verified(), todo("verified", params={"hang": True}, timeout_s=0.2))

    assert result.error.code == "TASK_TIMEOUT"
    assert result.error.reason == error_pb2.ERROR_REASON_TASK_TIMEOUT
