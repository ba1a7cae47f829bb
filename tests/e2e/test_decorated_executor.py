"""An executor written as a decorated async function with a pydantic params model, run by a
real agent for a real scheduler: outputs come back, bad params are refused naming the field."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from google.protobuf import json_format

from cpa.scheduler.v1 import job_pb2
from cpa_agent import ExecutionContext, ExecutorRegistry, executor
from cpa_agent.executors.testing import run_alone
from cpa_client import SchedulerClient

from .conftest import Agents, finished, todo, todos_spec


class Greet(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=1)
    times: int = 1


class Greeting(pydantic.BaseModel):
    text: str
    attempt: int


@executor("greet", capabilities=["greeting:en"])
async def greet(params: Greet, ctx: ExecutionContext) -> Greeting:
    """Greets someone, `times` times."""
    await ctx.progress(50.0, "composing")
    return Greeting(text=" ".join([f"hello {params.name}"] * params.times), attempt=ctx.attempt)


async def test_a_decorated_function_runs_as_an_executor_of_a_real_agent(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("greeter", registry=ExecutorRegistry(executors=[greet]))
    [agent] = [a async for a in client.list_agents()]
    assert "greet" in agent.capabilities.actions
    assert "greeting:en" in agent.capabilities.capabilities

    ok = await client.schedule_job(
        todos_spec(todo("g", "greet", params={"name": "ada", "times": 2}))
    )
    job = await finished(client, ok.job.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
    assert json_format.MessageToDict(job.tasks[0].outputs) == {
        "text": "hello ada hello ada",
        "attempt": 1,
    }

    bad = await client.schedule_job(todos_spec(todo("g", "greet", params={"name": ""})))
    job = await finished(client, bad.job.job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    error = job.tasks[0].error
    assert error.code == "INVALID_PARAMS"
    assert json_format.MessageToDict(error.details)["field"] == "params.name"


async def test_the_decorated_function_is_tested_alone_like_a_class() -> None:
    outputs: dict[str, Any] = await run_alone(greet, params={"name": "bob"})
    assert outputs == {"text": "hello bob", "attempt": 1}


def test_the_params_model_must_be_a_pydantic_model() -> None:
    with pytest.raises(TypeError, match="pydantic model"):

        @executor("nope")
        async def nope(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
            return params
