"""`cpa submit --todos FILE.yaml`: a YAML list of ToDo mappings, read into `cpa.common.v1.ToDo`.

The file spells a ToDo as the intent catalog does (`timeout_s`, `retry_policy.initial_backoff_s`,
`action: echo`). This module checks shape and types, naming file, line and field of the first
problem; the scheduler checks the rest (task id syntax, cycles, retry limits) when the job is
submitted.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from google.protobuf import duration_pb2, struct_pb2

from cpa.common.v1 import todo_pb2
from cpa_scheduler.strict_yaml import StrictSafeLoader, YamlRefused

from .common import CliError

YamlPath: TypeAlias = tuple[str | int, ...]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

# The scheduler names fields as the API does (`spec.todos.todos[2].retry_policy.initial_backoff`);
# the file spells a few of them differently.
_API_FIELD_PREFIX = "spec.todos."
_FIELD_PART = re.compile(r"(\w+)|\[(\d+)\]")
_FILE_KEYS = {
    "custom_action": "action",
    "timeout": "timeout_s",
    "schedule_to_start_timeout": "schedule_to_start_timeout_s",
    "initial_backoff": "initial_backoff_s",
    "backoff_multiplier": "multiplier",
    "max_backoff": "max_backoff_s",
}

_ACTION_PREFIX = "ACTION_TYPE_"
_SELECTOR_PREFIX = "SELECTOR_STRATEGY_"
# Built-in action types by their file spelling (`open_app`); every other name is a custom action.
BUILTIN_ACTIONS: Mapping[str, todo_pb2.ActionType.ValueType] = {
    name.removeprefix(_ACTION_PREFIX).lower(): value
    for name, value in todo_pb2.ActionType.items()
    if value not in (todo_pb2.ACTION_TYPE_UNSPECIFIED, todo_pb2.ACTION_TYPE_CUSTOM)
}
SELECTOR_STRATEGIES: Mapping[str, todo_pb2.SelectorStrategy.ValueType] = {
    name.removeprefix(_SELECTOR_PREFIX).lower(): value
    for name, value in todo_pb2.SelectorStrategy.items()
    if value != todo_pb2.SELECTOR_STRATEGY_UNSPECIFIED
}

TODO_KEYS = (
    "id",
    "action",
    "description",
    "params",
    "depends_on",
    "timeout_s",
    "schedule_to_start_timeout_s",
    "selector",
    "text",
    "required_capabilities",
    "required_labels",
    "requires_approval",
    "retry_policy",
    "inputs",
    "credential_refs",
    "session",
)
SELECTOR_KEYS = ("strategy", "value")
# The server checks the reference itself (an upstream task, a known key); an artifact_name is
# passed on so that the server's "not supported yet" reaches the user.
INPUT_KEYS = ("task_id", "output_key", "artifact_name")
RETRY_POLICY_KEYS = (
    "max_attempts",
    "initial_backoff_s",
    "multiplier",
    "max_backoff_s",
    "jitter",
    "non_retryable_codes",
)


class TodosFileError(CliError):
    """A todos file that cannot be used; reads `<file>:<line>: <field>: <problem>`."""

    def __init__(self, problem: str, *, source: str, line: int | None, where: str = "") -> None:
        location = source if line is None else f"{source}:{line}"
        super().__init__(f"{location}: {where}: {problem}" if where else f"{location}: {problem}")
        self.source = source
        self.line = line
        self.where = where
        self.problem = problem


@dataclass(frozen=True, slots=True)
class TodosFile:
    """The ToDos of one file, and where each of their fields was written."""

    source: str
    todos: list[todo_pb2.ToDo]
    lines: Mapping[YamlPath, int]

    def location_of(self, api_field: str) -> str | None:
        """`todos.yaml:12` for a field the scheduler named (`spec.todos.todos[2].timeout`)."""
        if not api_field.startswith(_API_FIELD_PREFIX):
            return None
        parts: list[str | int] = [
            int(index) if index else _FILE_KEYS.get(name, name)
            for name, index in _FIELD_PART.findall(api_field.removeprefix(_API_FIELD_PREFIX))
        ]
        if parts[:1] != ["todos"] or len(parts) < 2 or not isinstance(parts[1], int):
            return None
        line = _Reader(source=self.source, lines=self.lines).line_of(tuple(parts))
        return f"{self.source}:{line}"


def load_todos(path: str | Path) -> list[todo_pb2.ToDo]:
    """Reads and converts the file; every problem is a TodosFileError."""
    return read_todos_file(path).todos


def read_todos_file(path: str | Path) -> TodosFile:
    """Like load_todos, keeping the line of every field for the scheduler's complaints."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise TodosFileError(
            f"cannot read the file ({error.strerror or error})", source=source, line=None
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise TodosFileError(f"not UTF-8 ({error.reason})", source=source, line=line) from None
    return parse_todos_file(text, source=source)


def parse_todos(text: str, *, source: str = "<todos>") -> list[todo_pb2.ToDo]:
    return parse_todos_file(text, source=source).todos


def parse_todos_file(text: str, *, source: str = "<todos>") -> TodosFile:
    data, lines = _load_yaml(text, source)
    reader = _Reader(source=source, lines=lines)
    if not isinstance(data, list):
        raise reader.error((), f"expected a YAML list of ToDo mappings, got {_kind(data)}")
    if not data:
        raise reader.error((), "the list holds no ToDos")
    todos = [reader.todo(item, ("todos", index)) for index, item in enumerate(data)]
    return TodosFile(source=source, todos=todos, lines=lines)


# --- YAML with line numbers ----------------------------------------------------------------------


def _load_yaml(text: str, source: str) -> tuple[Any, dict[YamlPath, int]]:
    loader = StrictSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise TodosFileError("the file is empty", source=source, line=1)
        data = loader.construct_document(node)
    except YamlRefused as error:
        raise TodosFileError(error.problem, source=source, line=error.line) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "invalid YAML"
        if error.problem and error.context and error.context_mark is not None:
            # "expected ']'" is found at the end; where the unclosed thing began helps more.
            problem += f" ({error.context} started on line {error.context_mark.line + 1})"
        raise TodosFileError(
            f"YAML syntax error: {problem}",
            source=source,
            line=None if mark is None else mark.line + 1,
        ) from None
    except yaml.YAMLError as error:
        raise TodosFileError(f"YAML error: {error}", source=source, line=None) from None
    finally:
        loader.dispose()
    lines: dict[YamlPath, int] = {(): node.start_mark.line + 1}
    # After construction: merge keys (`<<: {...}`) are flattened into the mapping by then.
    _record_lines(node, (), lines, seen=set())
    return data, lines


def _record_lines(
    node: yaml.Node, path: YamlPath, lines: dict[YamlPath, int], *, seen: set[int]
) -> None:
    if id(node) in seen:  # a node met twice (aliases are refused, so only defensively)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key_path = (*path, str(key_node.value))
                lines.setdefault(key_path, key_node.start_mark.line + 1)
                _record_lines(value_node, key_path, lines, seen=seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_path = (*path, index)
            lines.setdefault(item_path, item.start_mark.line + 1)
            _record_lines(item, item_path, lines, seen=seen)


# --- conversion --------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _field_name(path: YamlPath) -> str:
    """`todos[2].retry_policy.max_attempts`, as the API names fields."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True, slots=True)
class _Reader:
    source: str
    lines: Mapping[YamlPath, int]

    def line_of(self, path: YamlPath) -> int:
        """The line of `path` (without the leading "todos"), or of its nearest recorded parent."""
        file_path = path[1:] if path[:1] == ("todos",) else path
        for end in range(len(file_path), -1, -1):
            line = self.lines.get(file_path[:end])
            if line is not None:
                return line
        return 1

    def error(self, path: YamlPath, problem: str) -> TodosFileError:
        return TodosFileError(
            problem, source=self.source, line=self.line_of(path), where=_field_name(path)
        )

    def mapping(
        self, value: Any, path: YamlPath, keys: tuple[str, ...], what: str
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected {what} (a mapping), got {_kind(value)}")
        for key in value:
            if not isinstance(key, str) or key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(keys)}"
                raise self.error((*path, str(key)), f"unknown key {str(key)!r} ({hint})")
        return value

    def string(self, value: Any, path: YamlPath) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {_kind(value)}")
        return value

    def strings(self, value: Any, path: YamlPath) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise self.error(path, f"expected a list of strings, got {_kind(value)}")
        return [self.string(item, (*path, index)) for index, item in enumerate(items)]

    def number(self, value: Any, path: YamlPath) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.error(path, f"expected a number, got {_kind(value)}")
        return float(value)

    def integer(self, value: Any, path: YamlPath) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"expected a whole number, got {_kind(value)}")
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise self.error(path, f"{value} is out of range")
        return value

    def boolean(self, value: Any, path: YamlPath) -> bool:
        if not isinstance(value, bool):
            raise self.error(path, f"expected true or false, got {_kind(value)}")
        return value

    def seconds(self, value: Any, path: YamlPath) -> duration_pb2.Duration:
        seconds = self.number(value, path)
        if not 0 <= seconds < math.inf:
            raise self.error(path, f"expected a number of seconds >= 0, got {value!r}")
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(round(seconds * 1e9))
        return duration

    def struct(self, value: Any, path: YamlPath) -> struct_pb2.Struct:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {_kind(value)}")
        self.json_value(value, path)
        struct = struct_pb2.Struct()
        struct.update(value)
        return struct

    def json_value(self, value: Any, path: YamlPath) -> None:
        """Struct values are JSON: YAML dates, sets and non-string keys are refused."""
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise self.error(path, f"keys must be strings, got {_kind(key)} ({key!r})")
                self.json_value(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.json_value(item, (*path, index))
        elif isinstance(value, float) and not math.isfinite(value):
            raise self.error(path, f"expected a finite number, got {value!r}")
        elif value is not None and not isinstance(value, str | int | float | bool):
            raise self.error(
                path, f"expected a JSON value, got {_kind(value)} (quote it to pass it as text)"
            )

    def todo(self, value: Any, path: YamlPath) -> todo_pb2.ToDo:
        fields = self.mapping(value, path, TODO_KEYS, "a ToDo")
        for required in ("id", "action"):
            if required not in fields:
                raise self.error(path, f"missing required key {required!r}")
        message = todo_pb2.ToDo(id=self.string(fields["id"], (*path, "id")))
        action = self.string(fields["action"], (*path, "action"))
        if action.lower() in BUILTIN_ACTIONS:
            message.action = BUILTIN_ACTIONS[action.lower()]
        else:
            message.action = todo_pb2.ACTION_TYPE_CUSTOM
            message.custom_action = action
        converters: dict[str, Callable[[Any, YamlPath], None]] = {
            "description": lambda v, p: setattr(message, "description", self.string(v, p)),
            "text": lambda v, p: setattr(message, "text", self.string(v, p)),
            "params": lambda v, p: message.params.CopyFrom(self.struct(v, p)),
            "depends_on": lambda v, p: message.depends_on.extend(self.strings(v, p)),
            "timeout_s": lambda v, p: message.timeout.CopyFrom(self.seconds(v, p)),
            "schedule_to_start_timeout_s": lambda v, p: message.schedule_to_start_timeout.CopyFrom(
                self.seconds(v, p)
            ),
            "selector": lambda v, p: message.selector.CopyFrom(self.selector(v, p)),
            "required_capabilities": lambda v, p: message.required_capabilities.extend(
                self.strings(v, p)
            ),
            "required_labels": lambda v, p: message.required_labels.update(self.labels(v, p)),
            "requires_approval": lambda v, p: setattr(
                message, "requires_approval", self.boolean(v, p)
            ),
            "retry_policy": lambda v, p: message.retry_policy.CopyFrom(self.retry_policy(v, p)),
            "inputs": lambda v, p: self.inputs(message, v, p),
            # purpose -> reference (env:NAME, file:/path, a name): never a secret itself.
            "credential_refs": lambda v, p: message.credential_refs.update(self.labels(v, p)),
            "session": lambda v, p: setattr(message, "session", self.string(v, p)),
        }
        for key, item in fields.items():
            if key in converters and item is not None:
                converters[key](item, (*path, key))
        return message

    def selector(self, value: Any, path: YamlPath) -> todo_pb2.Selector:
        fields = self.mapping(value, path, SELECTOR_KEYS, "a selector")
        for required in SELECTOR_KEYS:
            if required not in fields:
                raise self.error(path, f"missing required key {required!r}")
        strategy = self.string(fields["strategy"], (*path, "strategy"))
        if strategy.lower() not in SELECTOR_STRATEGIES:
            raise self.error(
                (*path, "strategy"),
                f"unknown strategy {strategy!r} (known: {', '.join(SELECTOR_STRATEGIES)})",
            )
        return todo_pb2.Selector(
            strategy=SELECTOR_STRATEGIES[strategy.lower()],
            value=self.string(fields["value"], (*path, "value")),
        )

    def inputs(self, message: todo_pb2.ToDo, value: Any, path: YamlPath) -> None:
        """`inputs: {name: {task_id: ..., output_key: ...}}`: outputs of upstream tasks."""
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping of inputs, got {_kind(value)}")
        for name, item in value.items():
            where = (*path, self.string(name, path))
            fields = self.mapping(item, where, INPUT_KEYS, "an input reference")
            reference = message.inputs[name]
            if fields.get("task_id") is not None:
                reference.task_id = self.string(fields["task_id"], (*where, "task_id"))
            if fields.get("output_key") is not None:
                reference.output_key = self.string(fields["output_key"], (*where, "output_key"))
            if fields.get("artifact_name") is not None:
                reference.artifact_name = self.string(
                    fields["artifact_name"], (*where, "artifact_name")
                )

    def labels(self, value: Any, path: YamlPath) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping of strings, got {_kind(value)}")
        return {
            self.string(key, path): self.string(item, (*path, str(key)))
            for key, item in value.items()
        }

    def retry_policy(self, value: Any, path: YamlPath) -> todo_pb2.RetryPolicy:
        fields = self.mapping(value, path, RETRY_POLICY_KEYS, "a retry policy")
        policy = todo_pb2.RetryPolicy()
        for key, item in fields.items():
            where = (*path, key)
            if item is None:
                continue
            if key == "max_attempts":
                policy.max_attempts = self.integer(item, where)
            elif key == "initial_backoff_s":
                policy.initial_backoff.CopyFrom(self.seconds(item, where))
            elif key == "max_backoff_s":
                policy.max_backoff.CopyFrom(self.seconds(item, where))
            elif key == "multiplier":
                policy.backoff_multiplier = self.number(item, where)
            elif key == "jitter":
                policy.jitter = self.number(item, where)
            else:
                policy.non_retryable_codes.extend(self.strings(item, where))
        return policy
