"""Validation of a ToDo's params against an executor's `params_model`, before the executor runs.

One function for the runner and for tests of an executor alone (cpa_agent.executors.testing), so
both see the same instance and the same refusal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pydantic
from google.protobuf import json_format

from cpa.common.v1 import todo_pb2

INVALID_PARAMS = "INVALID_PARAMS"
"""TaskError.code of params the executor's model refuses (reason ERROR_REASON_INVALID_PARAMS)."""

# Problems listed in TaskError.details.errors; the first one is also details.field/message.
MAX_LISTED_ERRORS = 10
# A message of pydantic's is short, but a custom validator may say anything: bounded.
_MAX_MESSAGE_CHARS = 300

# Built-in UI actions keep their target outside params, in ToDo.selector and ToDo.text; a model
# of such an action may declare fields of these names to read them (see model_input).
_TODO_FIELDS = ("selector", "text")
_UI_ACTIONS = frozenset(
    {
        todo_pb2.ACTION_TYPE_OPEN_APP,
        todo_pb2.ACTION_TYPE_CLICK,
        todo_pb2.ACTION_TYPE_TYPE,
        todo_pb2.ACTION_TYPE_WAIT_FOR,
        todo_pb2.ACTION_TYPE_UIA,
    }
)


class InvalidParams(Exception):  # noqa: N818 (the state of the params, like InvalidArgument)
    """Params the model refused: `field` is the path of the first problem (`params.steps[2].
    selector`), `errors` every problem as (field, message), at most MAX_LISTED_ERRORS."""

    def __init__(self, errors: Sequence[tuple[str, str]], total: int) -> None:
        self.errors = list(errors)
        self.total = total
        self.field, self.message = self.errors[0]
        more = f" (and {total - 1} more)" if total > 1 else ""
        super().__init__(f"{self.field}: {self.message}{more}")

    def details(self) -> dict[str, Any]:
        """TaskError.details: the first field and message, and every problem listed."""
        return {
            "field": self.field,
            "message": self.message,
            "errors": [{"field": field, "message": message} for field, message in self.errors],
            "error_count": self.total,
        }


def field_path(location: Sequence[int | str], roots: Mapping[str, str]) -> str:
    """pydantic's error location as a request path: ("steps", 2, "selector") ->
    `params.steps[2].selector`; a top-level key taken from the ToDo (roots) keeps its own root."""
    if not location:
        return "params"
    first, rest = location[0], location[1:]
    path = roots.get(str(first), f"params.{first}") if isinstance(first, str) else "params"
    if isinstance(first, int):
        path += f"[{first}]"
    for part in rest:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def model_input(
    model: type[pydantic.BaseModel], todo: todo_pb2.ToDo, params: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """What the model validates, and the paths of the keys that do not come from params.

    That is params, plus, for a built-in UI action (open_app, click, type, wait_for, uia), the
    ToDo's `selector` ({"strategy": "css", "value": ...}) and `text` when the model declares a
    field of that name, the ToDo sets it and params do not name it themselves."""
    data = dict(params)
    roots: dict[str, str] = {}
    if todo.action not in _UI_ACTIONS:
        return data, roots
    for name in _TODO_FIELDS:
        if name not in model.model_fields or name in data:
            continue
        # Named after the ToDo field, also when it is missing: that is where it belongs.
        roots[name] = name
        if name == "selector" and todo.HasField("selector"):
            data[name] = json_format.MessageToDict(todo.selector, preserving_proto_field_name=True)
        elif name == "text" and todo.text:
            data[name] = todo.text
    return data, roots


def parse_params(
    model: type[pydantic.BaseModel], todo: todo_pb2.ToDo, params: Mapping[str, Any]
) -> pydantic.BaseModel:
    """An instance of `model` from the ToDo's params; InvalidParams naming the fields otherwise.

    pydantic's messages name the rule broken, never the value given (input values are not
    copied into the error: they may be anything the caller sent)."""
    data, roots = model_input(model, todo, params)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        problems = error.errors(include_url=False, include_input=False, include_context=False)
        listed = [
            (field_path(problem["loc"], roots), problem["msg"][:_MAX_MESSAGE_CHARS])
            for problem in problems[:MAX_LISTED_ERRORS]
        ]
        raise InvalidParams(listed, total=len(problems)) from None
