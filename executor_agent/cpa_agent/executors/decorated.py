"""Executors written as one decorated async function:

    class Greet(pydantic.BaseModel):
        name: str

    @executor("greet")
    async def greet(params: Greet, ctx: ExecutionContext) -> dict[str, Any]:
        return {"greeting": f"hello {params.name}"}

    registry.register(greet)

The params model is read from the first parameter's annotation (or given as `params=`); the
runner validates a ToDo's params against it before the function runs, exactly as for a class
with `params_model` (a refusal is INVALID_PARAMS, not retryable, naming the field). The function
returns the outputs: a dict, or a pydantic model (dumped as JSON). Everything else (progress,
secrets, artifacts, cancellation) is on `ctx`, as for any executor (docs/EXECUTOR_GUIDE.md).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pydantic

from cpa_agent.executors.base import ExecutionContext

Outputs = dict[str, Any] | pydantic.BaseModel
Function = Callable[[Any, ExecutionContext], Awaitable[Outputs]]


class FunctionExecutor:
    """An Executor (the protocol of cpa_agent.executors.base) around an async function."""

    def __init__(
        self,
        action: str,
        function: Function,
        *,
        params_model: type[pydantic.BaseModel],
        capabilities: Sequence[str] = (),
    ) -> None:
        self._action = action
        self._function = function
        self.params_model = params_model
        self.capabilities = list(capabilities)
        self.__doc__ = function.__doc__

    @property
    def action(self) -> str:
        return self._action

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        outputs = await self._function(ctx.parsed_params, ctx)
        if isinstance(outputs, pydantic.BaseModel):
            return outputs.model_dump(mode="json")
        return outputs

    async def __call__(self, params: Any, ctx: ExecutionContext) -> Outputs:
        """The function itself, for tests that call it directly."""
        return await self._function(params, ctx)


def executor(
    action: str,
    *,
    params: type[pydantic.BaseModel] | None = None,
    capabilities: Sequence[str] = (),
) -> Callable[[Function], FunctionExecutor]:
    """Makes `async def f(params: Model, ctx: ExecutionContext)` the executor of `action`."""

    def wrap(function: Function) -> FunctionExecutor:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"@executor({action!r}) needs an async function")
        model = params or _first_annotation(function)
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise TypeError(
                f"@executor({action!r}): annotate the first parameter with a pydantic model "
                "(or pass params=Model)"
            )
        return FunctionExecutor(action, function, params_model=model, capabilities=capabilities)

    return wrap


def _first_annotation(function: Function) -> object:
    names = list(inspect.signature(function).parameters)
    if not names:
        return None
    # get_type_hints resolves string annotations (from __future__ import annotations).
    return typing.get_type_hints(function).get(names[0])
