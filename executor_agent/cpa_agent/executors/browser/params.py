"""The params of the `playwright` action (docs/BROWSER.md): one op, or `steps`, a list of ops.

Pydantic models with extra="forbid", so a misspelt key is refused, not ignored; `op` is the
discriminator. `validate_params` turns a ValidationError into INVALID_PARAMS naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cpa_agent.executors.base import ExecutorError

INVALID_PARAMS = "INVALID_PARAMS"
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
    """Params of the `playwright` action: `{"op": ...}` is read as `{"steps": [{"op": ...}]}`."""

    steps: list[Op] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="before")
    @classmethod
    def _one_op_is_one_step(cls, data: Any) -> Any:
        if isinstance(data, dict) and "op" in data and "steps" not in data:
            return {"steps": [data]}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        # Two ops writing the same output key or artifact would lose the first one silently.
        seen: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            key = None
            if isinstance(step, ExtractText):
                key, field = f"texts.{step.as_}", "as"
            elif isinstance(step, Download):
                key, field = f"artifact.{step.artifact}", "artifact"
            if key is None:
                continue
            if key in seen:
                raise ValueError(
                    f"steps[{index}].{field} repeats the {field} of steps[{seen[key]}]"
                )
            seen[key] = index
        return self


def field_path(loc: tuple[int | str, ...], *, one_op: bool) -> str:
    """`params.steps[2].selector.css` from a pydantic error location; the op name pydantic adds
    after a step's index (the discriminator's tag) is left out, and so is `steps[0]` when the
    params were a single op."""
    parts: list[int | str] = list(loc)
    if one_op and parts[:2] == ["steps", 0]:
        parts = parts[2:]
        if parts and parts[0] in OP_NAMES:
            parts = parts[1:]
    path = "params"
    previous: int | str | None = None
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not (isinstance(previous, int) and part in OP_NAMES):
            path += f".{part}"
        previous = part
    return path


def invalid_params(error: ValidationError, *, one_op: bool) -> ExecutorError:
    """INVALID_PARAMS (not retryable) naming the first field at fault."""
    first = error.errors(include_url=False, include_input=False)[0]
    field = field_path(tuple(first["loc"]), one_op=one_op)
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        field += ".op"  # pydantic puts the discriminator's error on the op itself
    message = str(first["msg"]).removeprefix("Value error, ")
    return ExecutorError(
        INVALID_PARAMS,
        f"{field}: {message}",
        retryable=False,
        details={"field": field, "errors": error.error_count()},
    )


def validate_params(params: dict[str, Any]) -> PlaywrightParams:
    """The params as a model, or INVALID_PARAMS naming the field."""
    try:
        return PlaywrightParams.model_validate(params)
    except ValidationError as error:
        one_op = "op" in params and "steps" not in params
        raise invalid_params(error, one_op=one_op) from None
