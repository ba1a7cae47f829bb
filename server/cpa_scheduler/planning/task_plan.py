"""The plan a language model proposes (TaskPlan) and our validation of it.

Dependency inference and selectors are the model's job; whether the plan may run is ours. A
proposal is checked as a whole and every problem is listed (field + message), so one repair
round can fix them all: actions known and served, params valid against the executor's schema,
selectors where the action needs one, the graph rules (ids, known dependencies, no cycle, inputs
upstream: TaskGraph, the same checks as for explicit ToDos) and the tenant's policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from cpa_scheduler.domain import DomainError, TaskGraph, ToDo
from cpa_scheduler.domain.todo import OutputRef, Selector, SelectorStrategy

from .actions import ActionCatalog

if TYPE_CHECKING:
    from jsonschema import ValidationError

    from cpa_scheduler.policy.rules import Policy

# Bounds on what a model's answer may make us do: the schema caps sizes so a huge or deeply
# nested answer is refused while it is parsed, before any check walks it.
MAX_PARAMS_JSON_CHARS = 16 * 1024
MAX_PARAMS_DEPTH = 16
MAX_LISTED_PROBLEMS = 20


class PlannedSelector(BaseModel):
    """Where a UI action applies; strategy one of css, xpath, text, role, test_id."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(max_length=16)
    value: str = Field(max_length=2048)


class PlannedInput(BaseModel):
    """An input of a task: the value under output_key in the outputs of upstream task_id, or
    the file it stored as artifact artifact_name (one of the two; a mail attachment is one)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63)
    task_id: str = Field(max_length=63)
    output_key: str = Field(default="", max_length=256)
    artifact_name: str = Field(default="", max_length=255)


class PlannedTask(BaseModel):
    """One step: an action of the catalog, its params as a JSON object in text, its
    dependencies by task id."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=63)
    action: str = Field(max_length=63)
    description: str = Field(default="", max_length=1024)
    params_json: str = Field(default="{}", max_length=MAX_PARAMS_JSON_CHARS)
    selector: PlannedSelector | None = None
    text: str = Field(default="", max_length=4096)
    depends_on: list[str] = Field(default_factory=list, max_length=64)
    inputs: list[PlannedInput] = Field(default_factory=list, max_length=32)


class TaskPlan(BaseModel):
    """The model's answer: the steps and why it chose them."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(default="", max_length=8192)
    tasks: list[PlannedTask] = Field(max_length=256)


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a proposal cannot run: where (`tasks[1].params.seconds`) and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    """A proposal checked: its ToDos when it may run (they passed TaskGraph's checks), else
    the problems (at most MAX_LISTED_PROBLEMS, `total` counts all)."""

    todos: tuple[ToDo, ...] | None
    problems: tuple[Problem, ...] = ()
    total: int = 0


def check(
    plan: TaskPlan,
    *,
    actions: ActionCatalog,
    max_tasks: int,
    policy: Policy | None = None,
) -> Checked:
    """Validate `plan` as a whole (see the module doc)."""
    problems: list[Problem] = []
    if not plan.tasks:
        problems.append(Problem("tasks", "the plan has no task"))
    if len(plan.tasks) > max_tasks:
        problems.append(Problem("tasks", f"at most {max_tasks} tasks, got {len(plan.tasks)}"))
    todos: list[ToDo] = []
    for index, task in enumerate(plan.tasks[:max_tasks]):
        todo = _todo(task, f"tasks[{index}]", actions, problems)
        if todo is not None:
            todos.append(todo)
    graph = None
    if not problems:
        try:
            graph = TaskGraph.from_todos(todos)
        except DomainError as error:
            problems.append(Problem(error.field.replace("todos", "tasks", 1), error.message))
    if graph is not None and policy is not None:
        for index, todo in enumerate(todos):
            refusal = policy.first_refusal(todo)
            if refusal is not None:
                problems.append(
                    Problem(
                        f"tasks[{index}].{refusal.field}",
                        f"refused by the tenant's policy: {refusal.detail} (rule {refusal.rule})",
                    )
                )
    if problems:
        return Checked(
            todos=None, problems=tuple(problems[:MAX_LISTED_PROBLEMS]), total=len(problems)
        )
    return Checked(todos=tuple(todos))


def _todo(
    task: PlannedTask, where: str, actions: ActionCatalog, problems: list[Problem]
) -> ToDo | None:
    """The ToDo of one planned task, or None with its problems appended."""
    before = len(problems)
    spec = actions.get(task.action)
    if spec is None:
        known = ", ".join(actions.names) or "none"
        problems.append(
            Problem(f"{where}.action", f"unknown action {task.action!r}; known: {known}")
        )
    params = _params(task.params_json, f"{where}.params_json", problems)
    if spec is not None and params is not None and spec.validator is not None:
        errors = [e for error in spec.validator.iter_errors(params) for e in _named_branch(error)]
        for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])[:5]:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            problems.append(Problem(f"{where}.params{path}", error.message[:300]))
    selector = None
    if task.selector is not None:
        try:
            selector = Selector(
                strategy=SelectorStrategy(task.selector.strategy), value=task.selector.value
            )
        except ValueError:
            strategies = ", ".join(s.value for s in SelectorStrategy)
            problems.append(
                Problem(
                    f"{where}.selector.strategy",
                    f"unknown strategy {task.selector.strategy!r}; one of {strategies}",
                )
            )
    elif spec is not None and spec.needs_selector:
        problems.append(Problem(f"{where}.selector", f"action {task.action!r} needs a selector"))
    if len(problems) > before:
        return None
    todo = ToDo(
        id=task.id,
        action=task.action,
        description=task.description,
        selector=selector,
        text=task.text,
        params=params or {},
        depends_on=tuple(task.depends_on),
        inputs={
            item.name: OutputRef(
                task_id=item.task_id, output_key=item.output_key, artifact_name=item.artifact_name
            )
            for item in task.inputs
        },
    )
    try:
        todo.validate(where)
    except DomainError as error:
        problems.append(Problem(error.field, error.message))
        return None
    return todo


def _named_branch(error: ValidationError) -> list[ValidationError]:
    """The errors to report for `error`. A value valid under none of a union's schemas (a
    playwright step: one schema per `op`) gets the errors of the one branch it names, the one
    whose const and enum members it matches (`"op": "click"` without a selector: "'selector' is
    a required property"), not "is not valid under any of the given schemas", which a model
    cannot repair from. Without exactly one such branch, the error as it is."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [error]
    branches: dict[object, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    named = [
        errors
        for errors in branches.values()
        if not any(e.validator in ("const", "enum") for e in errors)
    ]
    if len(named) != 1:
        return [error]
    return [e for sub in named[0] for e in _named_branch(sub)]


def _params(text: str, where: str, problems: list[Problem]) -> dict[str, Any] | None:
    """params_json parsed: a JSON object nested at most MAX_PARAMS_DEPTH levels."""
    depth = deepest = 0
    in_string = escaped = False
    # Depth counted on the text before parsing: json.loads recurses, and a model's answer of
    # 10 000 brackets must cost a scan, not a RecursionError.
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > MAX_PARAMS_DEPTH:
        problems.append(Problem(where, f"nested deeper than {MAX_PARAMS_DEPTH} levels"))
        return None
    try:
        value = json.loads(text or "{}")
    except ValueError as error:
        problems.append(Problem(where, f"not JSON: {error}"))
        return None
    if not isinstance(value, dict):
        problems.append(Problem(where, "must be a JSON object"))
        return None
    return value
