"""The params of the `playwright` action (docs/BROWSER.md): one op, or `steps`, a list of ops.

Pydantic models with extra="forbid", so a misspelt key is refused, not ignored; `op` is the
discriminator. The agent's runner validates params with PlaywrightParams (cpa_agent.executors.
params) and refuses what does not fit with INVALID_PARAMS, naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, ErrorDetails, InitErrorDetails, PydanticCustomError

MAX_STEPS = 50
"""Ops of one action; two-digit evidence names (01-goto.png ... 50-click.png) stay sortable."""

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_PURPOSE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_MAX_SELECTOR_CHARS = 2000
_MAX_VALUE_CHARS = 100_000
# Only the web: a file: or chrome: URL would let a task read the agent's own files.
_ALLOWED_SCHEMES = frozenset({"http", "https"})
STRATEGIES = ("css", "xpath", "text", "role", "test_id")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selector(_Strict):
    """Exactly one strategy: css, xpath, text, role (with an optional accessible name) or
    test_id (the data-testid attribute). `exact` makes text and role names match whole and
    case-sensitively instead of as a case-insensitive substring."""

    css: str | None = Field(default=None, min_length=1, max_length=_MAX_SELECTOR_CHARS)
    xpath: str | None = Field(default=None, min_length=1, max_length=_MAX_SELECTOR_CHARS)
    text: str | None = Field(default=None, min_length=1, max_length=_MAX_SELECTOR_CHARS)
    role: str | None = Field(default=None, pattern=r"^[a-z]{1,40}$")
    name: str | None = Field(default=None, min_length=1, max_length=_MAX_SELECTOR_CHARS)
    test_id: str | None = Field(default=None, min_length=1, max_length=_MAX_SELECTOR_CHARS)
    exact: bool = False

    @model_validator(mode="after")
    def _one_strategy(self) -> Self:
        given = [strategy for strategy in STRATEGIES if getattr(self, strategy) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a selector takes exactly one of {', '.join(STRATEGIES)}; got "
                f"{', '.join(given) or 'none'}"
            )
        if self.name is not None and self.role is None:
            raise ValueError("name is only allowed with role")
        return self

    def describe(self) -> str:
        """A short readable form for messages and progress ("css '#login'")."""
        if self.role is not None:
            return f"role {self.role!r}" + ("" if self.name is None else f" name {self.name!r}")
        strategy = next(s for s in STRATEGIES if getattr(self, s) is not None)
        value = str(getattr(self, strategy))
        return f"{strategy} {value[:200]!r}"


class _Op(_Strict):
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    """This op's own time limit; default CPA_BROWSER_OP_TIMEOUT_S."""


class Goto(_Op):
    op: Literal["goto"]
    url: str = Field(min_length=1, max_length=8192)
    wait_until: Literal["load", "domcontentloaded", "networkidle", "commit"] = "load"

    @field_validator("url")
    @classmethod
    def _web_url(cls, url: str) -> str:
        if url == "about:blank":
            return url
        parts = urlsplit(url)
        if parts.scheme.lower() not in _ALLOWED_SCHEMES or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL (or about:blank)")
        return url


class Click(_Op):
    op: Literal["click"]
    selector: Selector


def _one_of(model: BaseModel, first: str, second: str) -> None:
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(f"give exactly one of {first} and {second}")


class Fill(_Op):
    """Replaces the field's value with `value`, or with the secret `secret` names."""

    op: Literal["fill"]
    selector: Selector
    value: str | None = Field(default=None, max_length=_MAX_VALUE_CHARS)
    secret: str | None = Field(default=None, pattern=_PURPOSE_PATTERN)

    @model_validator(mode="after")
    def _value_or_secret(self) -> Self:
        _one_of(self, "value", "secret")
        return self


class Type(_Op):
    """Types `text` (or the secret) key by key at the end of the field's value."""

    op: Literal["type"]
    selector: Selector
    text: str | None = Field(default=None, max_length=_MAX_VALUE_CHARS)
    secret: str | None = Field(default=None, pattern=_PURPOSE_PATTERN)
    delay_ms: float = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _text_or_secret(self) -> Self:
        _one_of(self, "text", "secret")
        return self


class Press(_Op):
    """Presses a key ("Enter", "Control+A") in the element, or on the page without selector."""

    op: Literal["press"]
    selector: Selector | None = None
    key: str = Field(min_length=1, max_length=64)


class Select(_Op):
    """Chooses the options of a <select> whose value or label is `value`."""

    op: Literal["select"]
    selector: Selector
    value: str | list[str] = Field(max_length=1000)


class WaitFor(_Op):
    op: Literal["wait_for"]
    selector: Selector
    state: Literal["attached", "detached", "visible", "hidden"] = "visible"


class ExtractText(_Op):
    """The element's visible text, returned in outputs.texts[as]."""

    op: Literal["extract_text"]
    selector: Selector
    as_: str = Field(default="text", alias="as", pattern=_NAME_PATTERN)


class Screenshot(_Op):
    """An extra screenshot, stored as NN-screenshot.png or NN-<name>.png."""

    op: Literal["screenshot"]
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    full_page: bool = False


class Download(_Op):
    """Clicks `selector` (or opens `url`) and stores the file it downloads as artifact
    `artifact`."""

    op: Literal["download"]
    selector: Selector | None = None
    url: str | None = Field(default=None, min_length=1, max_length=8192)
    artifact: str = Field(pattern=_NAME_PATTERN)

    @model_validator(mode="after")
    def _selector_or_url(self) -> Self:
        _one_of(self, "selector", "url")
        if self.url is not None:
            Goto._web_url(self.url)
        if _is_evidence_name(self.artifact):
            raise ValueError("artifact names like 'NN-...' and 'error-dom.html' are reserved")
        return self


class Verify(_Op):
    """Checks the page: the element exists (default), does not (`exists: false`), or its text
    contains `text`. A mismatch fails the action for good (VERIFY_FAILED, not retried)."""

    op: Literal["verify"]
    selector: Selector
    text: str | None = Field(default=None, min_length=1, max_length=_MAX_VALUE_CHARS)
    exists: bool | None = None

    @model_validator(mode="after")
    def _text_or_exists(self) -> Self:
        if self.text is not None and self.exists is not None:
            raise ValueError("give text or exists, not both")
        return self


AnyOp = (
    Goto | Click | Fill | Type | Press | Select | WaitFor | ExtractText | Screenshot | Download
) | Verify
"""One op of any kind."""
Op = Annotated[AnyOp, Field(discriminator="op")]
OP_NAMES = frozenset(
    {"goto", "click", "fill", "type", "press", "select", "wait_for", "extract_text"}
    | {"screenshot", "download", "verify"}
)


def _is_evidence_name(name: str) -> bool:
    return name == "error-dom.html" or (len(name) > 3 and name[:2].isdigit() and name[2] == "-")


class PlaywrightParams(_Strict):
    """Params of the `playwright` action: `{"op": ...}` is read as `{"steps": [{"op": ...}]}`.

    Errors are located as the caller wrote the params: `url` for a single op (not
    `steps.0.goto.url`), `steps.2.selector` for a list (pydantic's discriminator tag, the op
    name after the index, is left out); the runner turns that into `params.steps[2].selector`."""

    steps: list[Op] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="wrap")
    @classmethod
    def _located_as_written(cls, data: Any, handler: Callable[[Any], Self]) -> Self:
        one_op = isinstance(data, dict) and "op" in data and "steps" not in data
        try:
            params = handler({"steps": [data]} if one_op else data)
        except ValidationError as error:
            problems = error.errors(include_url=False)
            raise ValidationError.from_exception_data(
                error.title, [_relocated(problem, one_op=one_op) for problem in problems]
            ) from None
        params._check_unique_names(one_op=one_op)
        return params

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Both forms _located_as_written accepts, so that a plan's single op validates where
        the agent would run it (the planner checks params against this schema): params with
        `op` are one op, any other the `steps` object. if/then/else rather than anyOf: an op
        that does not fit is told what its own schema wants, not that it fits neither form."""
        schema = handler(core_schema)
        steps = handler.resolve_ref_schema(schema)
        one_op = steps["properties"]["steps"]["items"]
        return {
            **{key: steps.pop(key) for key in ("title", "description") if key in steps},
            "if": {"required": ["op"]},
            "then": one_op,
            "else": schema,
        }

    def _check_unique_names(self, *, one_op: bool) -> None:
        # Two ops writing the same output key or artifact would lose the first one silently.
        seen: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            if isinstance(step, ExtractText):
                key, field = f"texts.{step.as_}", "as"
            elif isinstance(step, Download):
                key, field = f"artifact.{step.artifact}", "artifact"
            else:
                continue
            if key in seen:
                message = f"repeats the {field} of steps[{seen[key]}]"
                problem = InitErrorDetails(
                    type=PydanticCustomError("duplicate", message),
                    loc=("steps", index, field),
                    input=None,
                )
                raise ValidationError.from_exception_data(type(self).__name__, [problem])
            seen[key] = index


def _relocated(problem: ErrorDetails, *, one_op: bool) -> InitErrorDetails:
    """One of pydantic's problems, its location without the op name after a step's index, and
    without `steps.0` when the params were one op; a problem of the op name itself (unknown or
    missing) is located at `op`. The message stays pydantic's (never the value given)."""
    loc = list(problem["loc"])
    loc = [
        part
        for i, part in enumerate(loc)
        if not (i and isinstance(loc[i - 1], int) and part in OP_NAMES)
    ]
    if problem["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("op")
    if one_op and loc[:2] == ["steps", 0]:
        loc = loc[2:]
    return InitErrorDetails(
        type=PydanticCustomError(problem["type"], problem["msg"].removeprefix("Value error, ")),
        loc=tuple(loc),
        input=problem.get("input"),
    )
