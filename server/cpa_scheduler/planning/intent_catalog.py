"""Intent catalog: intents, their patterns and task templates, as loaded and checked.

Loading a catalog file (YAML, schema, checks) lives in catalog_loading; every problem in a file
surfaces there as a CatalogError that names file, line and field. Matching text against the
catalog lives in intent_router.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from jinja2 import Template

from cpa_scheduler.domain import (
    DomainError,
    InvalidArgument,
    OutputRef,
    Reason,
    RetryPolicy,
    Selector,
    SelectorStrategy,
    ToDo,
)

from . import templates
from .patterns import Pattern
from .templates import RENDER_FAILURES, RenderBudget, RenderLimits, TemplateLimitExceeded

# The name RouteResult uses for "nothing matched"; no catalog intent may take it.
UNKNOWN_INTENT = "unknown"

# Templates see parameters by name and the request context under this one name.
CONTEXT_VARIABLE = "context"

# Anchored for pydantic's pattern (Rust regex: `$` is the end of the text); Python code must
# use fullmatch, as Python's `$` also matches before a final newline.
INTENT_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
PARAMETER_NAME_PATTERN = INTENT_NAME_PATTERN

ParamTemplate: TypeAlias = (
    "Template | bool | int | float | tuple[ParamTemplate, ...] | Mapping[str, ParamTemplate] | None"
)


# --- Loaded catalog -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Parameter:
    """A declared intent parameter. Without a default, an optional parameter stays unbound."""

    name: str
    required: bool = False
    has_default: bool = False
    default: Any = None
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskTemplate:
    """A ToDo whose strings (description, selector value, text, params) are Jinja2 templates."""

    id: str
    action: str
    description: Template
    selector_strategy: SelectorStrategy | None
    selector_value: Template | None
    text: Template
    params: Mapping[str, ParamTemplate]
    timeout_s: float | None
    schedule_to_start_s: float | None
    depends_on: tuple[str, ...]
    retry_policy: RetryPolicy | None
    required_capabilities: frozenset[str]
    required_labels: Mapping[str, str]
    requires_approval: bool
    inputs: Mapping[str, OutputRef]
    line: int
    credential_refs: Mapping[str, Template] = field(default_factory=dict)
    """Credential references by purpose; each reference is a template (the purpose is not)."""
    session: str = ""
    """Static, like depends_on (a session key is part of the plan's shape, not of its values)."""

    def render(
        self, variables: Mapping[str, Any], *, intent: str, budget: RenderBudget | None = None
    ) -> ToDo:
        """Fill in the templates; InvalidArgument(TEMPLATE_ERROR) names intent, task and field,
        InvalidArgument(TEMPLATE_LIMIT_EXCEEDED) when the render goes past `budget`'s limits."""
        budget = budget or RenderBudget(RenderLimits())

        def render(template: Template, field_name: str) -> str:
            try:
                return templates.render(template, variables, budget)
            except TemplateLimitExceeded as exc:
                raise InvalidArgument(
                    f"intent {intent!r} task {self.id!r} field {field_name!r}: {exc}",
                    reason=Reason.TEMPLATE_LIMIT_EXCEEDED,
                ) from None
            except RENDER_FAILURES as exc:
                raise InvalidArgument(
                    f"intent {intent!r} task {self.id!r} field {field_name!r}: {exc}",
                    reason=Reason.TEMPLATE_ERROR,
                ) from exc

        def render_param(value: ParamTemplate, field_name: str) -> Any:
            if isinstance(value, Template):
                return render(value, field_name)
            if isinstance(value, tuple):
                return [render_param(item, f"{field_name}[{i}]") for i, item in enumerate(value)]
            if isinstance(value, Mapping):
                return {
                    key: render_param(item, f"{field_name}.{key}") for key, item in value.items()
                }
            return value

        selector = None
        if self.selector_strategy is not None and self.selector_value is not None:
            selector = Selector(
                strategy=self.selector_strategy, value=render(self.selector_value, "selector.value")
            )
        todo = ToDo(
            id=self.id,
            action=self.action,
            description=render(self.description, "description"),
            selector=selector,
            text=render(self.text, "text"),
            params={
                key: render_param(value, f"params.{key}") for key, value in self.params.items()
            },
            timeout_s=self.timeout_s,
            schedule_to_start_s=self.schedule_to_start_s,
            depends_on=self.depends_on,
            retry_policy=self.retry_policy,
            required_capabilities=self.required_capabilities,
            required_labels=dict(self.required_labels),
            requires_approval=self.requires_approval,
            inputs=self.inputs,
            credential_refs={
                purpose: render(ref, f"credential_refs.{purpose}")
                for purpose, ref in self.credential_refs.items()
            },
            session=self.session,
        )
        try:
            todo.validate(f"tasks.{self.id}")
        except DomainError as exc:
            # Only rendered values can fail here (the static fields were checked at load).
            raise InvalidArgument(
                f"intent {intent!r} task {self.id!r}: rendered task is invalid: {exc.message}",
                reason=Reason.TEMPLATE_ERROR,
            ) from exc
        return todo


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """A named intent: how to recognise it, the parameters it takes and the task graph it plans."""

    name: str
    description: str
    patterns: tuple[Pattern, ...]
    parameters: tuple[Parameter, ...]
    tasks: tuple[TaskTemplate, ...]
    line: int

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def render(
        self,
        parameters: Mapping[str, Any],
        *,
        context: Mapping[str, Any],
        limits: RenderLimits = RenderLimits(),  # noqa: B008 (frozen, so sharing it is safe)
    ) -> tuple[ToDo, ...]:
        """Render every task with `parameters` by name and `context` under `context`, all of
        them together within `limits`."""
        variables = {**parameters, CONTEXT_VARIABLE: dict(context)}
        budget = RenderBudget(limits)
        return tuple(task.render(variables, intent=self.name, budget=budget) for task in self.tasks)


@dataclass(frozen=True, slots=True, kw_only=True)
class IntentCatalog:
    """The loaded intents in file order, which is also the order the router tries them in."""

    source: str
    intents: tuple[Intent, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(intent.name for intent in self.intents)

    def get(self, name: str) -> Intent | None:
        return next((intent for intent in self.intents if intent.name == name), None)
