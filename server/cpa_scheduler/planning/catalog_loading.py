"""Loading an intent catalog: YAML text, checked against the schema, then built into checked
intents (regexes, templates, names, task graphs). Every problem surfaces at load as a
CatalogError that names file, line and field; the loaded catalog is intent_catalog's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any

from jinja2 import Template, TemplateSyntaxError, meta
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cpa_scheduler.domain import (
    DomainError,
    OutputRef,
    Reason,
    RetryPolicy,
    SelectorStrategy,
    TaskGraph,
    ToDo,
)

from . import templates
from .catalog_yaml import CatalogError, Locator, YamlPath, parse_yaml
from .intent_catalog import (
    CONTEXT_VARIABLE,
    INTENT_NAME_PATTERN,
    PARAMETER_NAME_PATTERN,
    UNKNOWN_INTENT,
    Intent,
    IntentCatalog,
    Parameter,
    ParamTemplate,
    TaskTemplate,
)
from .patterns import Pattern, PatternError, compile_keywords, compile_regex

DEFAULT_CATALOG_RESOURCE = "intents.yaml"

# The domain's validators name fields as the API does; the catalog spells a few of them differently.
_DOMAIN_TO_YAML_FIELD = {
    "timeout": "timeout_s",
    "schedule_to_start_timeout": "schedule_to_start_timeout_s",
    "initial_backoff": "initial_backoff_s",
    "backoff_multiplier": "multiplier",
    "max_backoff": "max_backoff_s",
}


def load_catalog(path: str | PathLike[str]) -> IntentCatalog:
    """Load and check a catalog file; OSError if it cannot be read, CatalogError if it is broken."""
    source = str(path)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CatalogError(f"not UTF-8 ({exc.reason})", source=source, line=line) from exc
    return parse_catalog(text, source=source)


def load_default_catalog() -> IntentCatalog:
    """The sample catalog shipped with the package (planning/intents.yaml)."""
    resource = resources.files("cpa_scheduler.planning").joinpath(DEFAULT_CATALOG_RESOURCE)
    return parse_catalog(resource.read_text(encoding="utf-8"), source=str(resource))


def parse_catalog(text: str, *, source: str = "<string>") -> IntentCatalog:
    """Check catalog YAML text; `source` names it in error messages."""
    data, lines = parse_yaml(text, source=source)
    locator = Locator(source=source, data=data, lines=lines)
    try:
        spec = _CatalogSpec.model_validate(data)
    except ValidationError as exc:
        raise locator.schema_error(exc) from None
    return IntentCatalog(
        source=source,
        intents=_CatalogBuilder(locator).build(spec),
    )


# --- Schema ---------------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SelectorSpec(_Spec):
    strategy: SelectorStrategy
    value: str


class _RetryPolicySpec(_Spec):
    max_attempts: int | None = None
    initial_backoff_s: float | None = None
    multiplier: float | None = None
    max_backoff_s: float | None = None
    jitter: float | None = None
    non_retryable_codes: list[str] = Field(default_factory=list)


class _InputSpec(_Spec):
    task_id: str
    output_key: str = ""
    # The name of an artifact the upstream task stores (instead of output_key).
    artifact_name: str = ""


def _ref(spec: _InputSpec) -> OutputRef:
    return OutputRef(
        task_id=spec.task_id, output_key=spec.output_key, artifact_name=spec.artifact_name
    )


class _TaskSpec(_Spec):
    id: str
    action: str
    description: str = ""
    selector: _SelectorSpec | None = None
    text: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = None
    schedule_to_start_timeout_s: float | None = None
    depends_on: list[str] = Field(default_factory=list)
    required_capabilities: list[str] = Field(default_factory=list)
    required_labels: dict[str, str] = Field(default_factory=dict)
    requires_approval: bool = False
    retry_policy: _RetryPolicySpec | None = None
    inputs: dict[str, _InputSpec] = Field(default_factory=dict)
    credential_refs: dict[str, str] = Field(default_factory=dict)
    session: str = ""


class _PatternSpec(_Spec):
    regex: str | None = None
    keywords: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> _PatternSpec:
        if (self.regex is None) == (self.keywords is None):
            raise ValueError("a pattern needs exactly one of 'regex' or 'keywords'")
        return self


class _ParameterSpec(_Spec):
    required: bool = False
    default: Any = None
    description: str = ""


class _IntentSpec(_Spec):
    name: str = Field(pattern=INTENT_NAME_PATTERN.pattern)
    description: str = Field(min_length=1)
    # No patterns: the intent is only reachable by name (expand), never from text.
    patterns: list[_PatternSpec] = Field(default_factory=list)
    parameters: dict[str, _ParameterSpec | None] = Field(default_factory=dict)
    tasks: list[_TaskSpec] = Field(min_length=1)


class _CatalogSpec(_Spec):
    intents: list[_IntentSpec] = Field(min_length=1)


# --- Building checked intents ---------------------------------------------------------------------


class _CatalogBuilder:
    """Checks what the schema cannot (regexes, templates, names, graph) and compiles the intents."""

    def __init__(self, locator: Locator) -> None:
        self._locator = locator

    def build(self, spec: _CatalogSpec) -> tuple[Intent, ...]:
        intents: list[Intent] = []
        first_lines: dict[str, int] = {}
        for index, intent_spec in enumerate(spec.intents):
            path: YamlPath = ("intents", index)
            name_path = (*path, "name")
            if intent_spec.name == UNKNOWN_INTENT:
                raise self._locator.error(
                    name_path, f"{UNKNOWN_INTENT!r} is reserved for text that matches no intent"
                )
            if intent_spec.name in first_lines:
                raise self._locator.error(
                    name_path,
                    f"duplicate intent name {intent_spec.name!r} "
                    f"(first on line {first_lines[intent_spec.name]})",
                )
            first_lines[intent_spec.name] = self._locator.lines.line_of(name_path)
            intents.append(self._intent(intent_spec, path))
        return tuple(intents)

    def _intent(self, spec: _IntentSpec, path: YamlPath) -> Intent:
        parameters = self._parameters(spec, path)
        declared = frozenset(p.name for p in parameters)
        patterns = tuple(
            self._pattern(pattern, (*path, "patterns", index), declared)
            for index, pattern in enumerate(spec.patterns)
        )
        tasks = tuple(
            self._task(task, (*path, "tasks", index), declared)
            for index, task in enumerate(spec.tasks)
        )
        self._check_graph(spec.tasks, path)
        return Intent(
            name=spec.name,
            description=spec.description,
            patterns=patterns,
            parameters=parameters,
            tasks=tasks,
            line=self._locator.lines.line_of(path),
        )

    def _parameters(self, spec: _IntentSpec, path: YamlPath) -> tuple[Parameter, ...]:
        parameters = []
        for name, parameter_spec in spec.parameters.items():
            parameter_path = (*path, "parameters", name)
            if not PARAMETER_NAME_PATTERN.fullmatch(name) or name == CONTEXT_VARIABLE:
                raise self._locator.error(
                    parameter_path,
                    f"parameter name {name!r} must be lower snake case and not "
                    f"{CONTEXT_VARIABLE!r} (templates see the request context under that name)",
                )
            parameter_spec = parameter_spec or _ParameterSpec()
            has_default = "default" in parameter_spec.model_fields_set
            if has_default:
                self._check_plain_data(parameter_spec.default, (*parameter_path, "default"))
            if parameter_spec.required and has_default:
                raise self._locator.error(
                    parameter_path, "a required parameter cannot have a default"
                )
            parameters.append(
                Parameter(
                    name=name,
                    required=parameter_spec.required,
                    has_default=has_default,
                    default=parameter_spec.default,
                    description=parameter_spec.description,
                )
            )
        return tuple(parameters)

    def _pattern(self, spec: _PatternSpec, path: YamlPath, declared: frozenset[str]) -> Pattern:
        if spec.regex is not None:
            regex_path = (*path, "regex")
            try:
                compiled = compile_regex(spec.regex)
            except PatternError as exc:
                raise self._locator.error(regex_path, str(exc)) from None
            undeclared = sorted(set(compiled.groupindex) - declared)
            if undeclared:
                raise self._locator.error(
                    regex_path,
                    f"regex group {undeclared[0]!r} is not a declared parameter "
                    "(declare it under 'parameters')",
                )
            return Pattern(
                kind="regex",
                source=spec.regex,
                compiled=(compiled,),
                line=self._locator.lines.line_of(regex_path),
            )
        keywords = spec.keywords or []
        compiled_keywords = []
        for index, keyword in enumerate(keywords):
            try:
                compiled_keywords.append(compile_keywords(keyword))
            except PatternError as exc:
                raise self._locator.error((*path, "keywords", index), str(exc)) from None
        return Pattern(
            kind="keywords",
            source=", ".join(keywords),
            compiled=tuple(compiled_keywords),
            line=self._locator.lines.line_of((*path, "keywords")),
        )

    def _task(self, spec: _TaskSpec, path: YamlPath, declared: frozenset[str]) -> TaskTemplate:
        def template(text: str, *field_path: str | int) -> Template:
            return self._template(text, (*path, *field_path), declared)

        retry_policy = None
        if spec.retry_policy is not None:
            settings = spec.retry_policy.model_dump(exclude_none=True)
            settings["non_retryable_codes"] = frozenset(spec.retry_policy.non_retryable_codes)
            try:
                retry_policy = RetryPolicy(**settings)
            except DomainError as exc:
                raise self._domain_error(exc, path) from None
        inputs = self._inputs(spec, path)
        try:
            # The fields that are not templates can be checked once, here, by the domain's rules.
            ToDo(
                id=spec.id,
                action=spec.action,
                timeout_s=spec.timeout_s,
                schedule_to_start_s=spec.schedule_to_start_timeout_s,
                retry_policy=retry_policy,
                inputs=inputs,
                # Purposes and count are static; the references are checked once rendered.
                credential_refs=dict.fromkeys(spec.credential_refs, "-"),
                session=spec.session,
            ).validate("todo")
        except DomainError as exc:
            raise self._domain_error(exc, path) from None
        return TaskTemplate(
            id=spec.id,
            action=spec.action,
            description=template(spec.description, "description"),
            selector_strategy=None if spec.selector is None else spec.selector.strategy,
            selector_value=(
                None
                if spec.selector is None
                else template(spec.selector.value, "selector", "value")
            ),
            text=template(spec.text, "text"),
            params={
                key: self._param_template(value, (*path, "params", key), declared)
                for key, value in spec.params.items()
            },
            timeout_s=spec.timeout_s,
            schedule_to_start_s=spec.schedule_to_start_timeout_s,
            depends_on=tuple(spec.depends_on),
            retry_policy=retry_policy,
            required_capabilities=frozenset(spec.required_capabilities),
            required_labels=dict(spec.required_labels),
            requires_approval=spec.requires_approval,
            inputs=inputs,
            line=self._locator.lines.line_of(path),
            credential_refs={
                purpose: template(ref, "credential_refs", purpose)
                for purpose, ref in spec.credential_refs.items()
            },
            session=spec.session,
        )

    def _inputs(self, spec: _TaskSpec, path: YamlPath) -> dict[str, OutputRef]:
        """Inputs as the API takes them (task_id and output_key or artifact_name), static like
        depends_on."""
        return {name: _ref(spec.inputs[name]) for name in sorted(spec.inputs)}

    def _param_template(
        self, value: Any, path: YamlPath, declared: frozenset[str]
    ) -> ParamTemplate:
        # Strings are templates; YAML numbers, booleans and nulls stay as they are.
        if isinstance(value, str):
            return self._template(value, path, declared)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, list):
            return tuple(
                self._param_template(item, (*path, index), declared)
                for index, item in enumerate(value)
            )
        if isinstance(value, dict):
            result: dict[str, ParamTemplate] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise self._locator.error(path, f"key {key!r} must be a string")
                result[key] = self._param_template(item, (*path, key), declared)
            return result
        raise self._locator.error(path, _not_plain_data(value))

    def _check_plain_data(self, value: Any, path: YamlPath) -> None:
        if isinstance(value, str | bool | int | float) or value is None:
            return
        if isinstance(value, list):
            for index, item in enumerate(value):
                self._check_plain_data(item, (*path, index))
            return
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise self._locator.error(path, f"key {key!r} must be a string")
                self._check_plain_data(item, (*path, key))
            return
        raise self._locator.error(path, _not_plain_data(value))

    def _template(self, text: str, path: YamlPath, declared: frozenset[str]) -> Template:
        try:
            tree = templates.ENVIRONMENT.parse(text)
            private = templates.private_attribute(tree)
            if private is not None:
                raise self._locator.error(
                    path,
                    f"access to attribute {private!r} is not allowed in templates",
                    reason=Reason.TEMPLATE_ERROR,
                )
            allowed = declared | {CONTEXT_VARIABLE} | set(templates.ENVIRONMENT.globals)
            unknown = sorted(meta.find_undeclared_variables(tree) - allowed)
            if unknown:
                known = ", ".join(sorted(declared)) or "none"
                raise self._locator.error(
                    path,
                    f"undefined variable {unknown[0]!r} (declared parameters: {known}; "
                    f"the request context is {CONTEXT_VARIABLE!r})",
                    reason=Reason.TEMPLATE_ERROR,
                )
            return templates.compile_template(tree)
        except TemplateSyntaxError as exc:
            line = None
            literal_start = self._locator.lines.literal_starts.get(path)
            if literal_start is not None and exc.lineno:
                line = literal_start + exc.lineno - 1
            raise self._locator.error(
                path,
                exc.message or "template syntax error",
                reason=Reason.TEMPLATE_ERROR,
                line=line,
            ) from None

    def _check_graph(self, tasks: Sequence[_TaskSpec], path: YamlPath) -> None:
        # TaskGraph owns the graph rules (duplicates, unknown dependencies, cycles, inputs taken
        # from upstream tasks); only the location of its error is translated into the YAML
        # document here.
        probes = [
            ToDo(
                id=t.id,
                action=t.action,
                depends_on=tuple(t.depends_on),
                inputs={name: _ref(ref) for name, ref in t.inputs.items()},
            )
            for t in tasks
        ]
        try:
            TaskGraph.from_todos(probes)
        except DomainError as exc:
            field_path = _field_path(exc.field)
            if field_path[:1] == ("todos",):
                field_path = ("tasks", *field_path[1:])
            raise self._locator.error(
                (*path, *field_path), exc.message, reason=exc.reason
            ) from None

    def _domain_error(self, exc: DomainError, task_path: YamlPath) -> CatalogError:
        # Domain fields read "todo.timeout" or "retry_policy.max_backoff"; map them to YAML keys.
        # An input's name is the user's own key ("inputs[timeout]"), never renamed.
        parts = _field_path(exc.field.removeprefix("todo"))
        field_path = tuple(
            _DOMAIN_TO_YAML_FIELD.get(p, p)
            if isinstance(p, str) and (i == 0 or parts[i - 1] not in ("inputs", "credential_refs"))
            else p
            for i, p in enumerate(parts)
        )
        return self._locator.error((*task_path, *field_path), exc.message, reason=exc.reason)


def _field_path(field: str) -> YamlPath:
    """A request field path ("todos[2].depends_on[0]") as YAML path parts."""
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field):
        parts.append(name if name else int(index))
    return tuple(parts)


def _not_plain_data(value: Any) -> str:
    return (
        f"value of type {type(value).__name__} is not allowed; use strings, numbers, booleans, "
        "lists and mappings (quote dates)"
    )
