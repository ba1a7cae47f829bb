"""The catalog's task templates: sandboxed Jinja2 whose every render is bounded in size and steps.

A template is the operator's, its variables the caller's; both run on the event loop. Jinja's
sandbox stops escapes, and bounds `range()` to 100 000 items, but not output size, nested loops or
recursion. So each render of an intent gets a budget: at most `max_bytes` of rendered text (all its
tasks' strings together) and `max_steps` steps, a step being one loop iteration or one call (a
macro, a method, `loop()`). Operations that would build a large value in one go (`'x' * n`,
`n ** m`, `'%0*d'`, `.ljust(n)`, the width filters) are checked before they run.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import re2
from jinja2 import StrictUndefined, Template, TemplateError, nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .months import iso_month

DEFAULT_RENDER_MAX_BYTES = 1024 * 1024
DEFAULT_RENDER_MAX_STEPS = 10_000

# Failures rendering a template can raise besides TemplateError: filters run on caller data, and a
# macro may call itself without end.
RENDER_FAILURES = (
    TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)

# Filters the loader puts into every template (see _instrument): every `{% for %}` loop's iterable
# goes through the first, every `~` concatenation through the second.
_COUNTED = "cpa_counted"
_SIZED = "cpa_sized"

# Widths and precisions in printf-style formats ("%0100000000d", "%.9999999f"); re2: linear time.
_PRINTF_NUMBERS = re2.compile(r"%[-#0 +]*(\*|[0-9]+)?(?:\.(\*|[0-9]+))?")
# str methods whose int argument is the width of the result.
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_FORMAT_FIELDS = re2.compile(r"\{[^{}]*\}")
_DIGITS = re2.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """What one render of an intent (all its tasks) may cost."""

    max_bytes: int = DEFAULT_RENDER_MAX_BYTES
    max_steps: int = DEFAULT_RENDER_MAX_STEPS


class TemplateLimitExceeded(Exception):  # noqa: N818 (a limit, like the domain's error names)
    """A render went past its RenderLimits; the message says which limit."""


class RenderBudget:
    """What is left of one render's limits; shared by the templates of one intent's tasks."""

    __slots__ = ("_bytes_left", "_steps_left", "limits")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self._bytes_left = limits.max_bytes
        self._steps_left = limits.max_steps

    def spend_bytes(self, count: int) -> None:
        self._bytes_left -= count
        if self._bytes_left < 0:
            raise TemplateLimitExceeded(f"the rendered tasks exceed {self.limits.max_bytes} bytes")

    def check_size(self, count: int) -> None:
        """Refuse a value of `count` bytes (or items) before building it."""
        if count > self.limits.max_bytes:
            raise TemplateLimitExceeded(
                f"a value of {count} bytes exceeds the render limit of {self.limits.max_bytes}"
            )

    def spend_step(self) -> None:
        self._steps_left -= 1
        if self._steps_left < 0:
            raise TemplateLimitExceeded(
                f"rendering takes more than {self.limits.max_steps} steps "
                "(loop iterations and calls)"
            )


_BUDGET: contextvars.ContextVar[RenderBudget] = contextvars.ContextVar("cpa_render_budget")


def render(template: Template, variables: Mapping[str, Any], budget: RenderBudget) -> str:
    """The template's text, charged to `budget`; TemplateLimitExceeded once it is spent."""
    token = _BUDGET.set(budget)
    try:
        parts = []
        for chunk in template.generate(variables):
            budget.spend_bytes(len(chunk.encode("utf-8", "surrogatepass")))
            parts.append(chunk)
        return "".join(parts)
    finally:
        _BUDGET.reset(token)


def _budget() -> RenderBudget:
    # Templates of this environment are rendered only through render(), which sets it.
    return _BUDGET.get()


def _size(value: Any) -> int | None:
    """About how large a value is: characters of a string, items and characters of a list."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple):
        return len(value) + sum(len(item) for item in value if isinstance(item, str))
    return None


def _sized(value: Any) -> Any:
    size = _size(value)
    if size is not None:
        _budget().check_size(size)
    return value


def _check_printf(text: str) -> None:
    for match in _PRINTF_NUMBERS.finditer(text):
        for number in match.groups():
            if number == "*":
                raise TemplateLimitExceeded("'*' widths in % formats are not allowed")
            if number:
                _budget().check_size(int(number))


def _check_format_fields(text: str) -> None:
    # "{:>100000000}": the numbers inside replacement fields are widths and precisions.
    for field in _FORMAT_FIELDS.findall(text):
        for number in _DIGITS.findall(field):
            _budget().check_size(int(number))


def _check_int_arguments(*arguments: Any) -> None:
    for argument in arguments:
        if isinstance(argument, int) and not isinstance(argument, bool):
            _budget().check_size(argument)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, charging calls, loop iterations and large values to the render's budget."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self) -> None:
        # Strict (a missing variable is an error, not an empty string) and unescaped (the output
        # is plain text for agents, not HTML).
        super().__init__(undefined=StrictUndefined, autoescape=False)
        # lipsum(n) generates n paragraphs: no use in a task, a cheap way to burn the loop.
        del self.globals["lipsum"]
        self.filters[_COUNTED] = _counted
        self.filters[_SIZED] = _sized
        for name in ("center", "indent", "wordwrap", "batch", "slice"):
            self.filters[name] = _int_checked(self.filters[name])
        self.filters["format"] = _format_checked(self.filters["format"])
        self.filters["replace"] = _replace_checked(self.filters["replace"])
        # Months as people say them ("November") in the form portals use ("2026-11").
        self.filters["iso_month"] = iso_month

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                size = _size(sequence)
                if size is not None and isinstance(times, int):
                    budget.check_size(size * times)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            # The result has about bit_length * right bits; refuse what would not fit the limit.
            budget.check_size(max(abs(left).bit_length() - 1, 0) * right // 8)
        elif operator == "%" and isinstance(left, str):
            _check_printf(left)
        result = super().call_binop(context, operator, left, right)
        size = _size(result)
        if size is not None:
            budget.check_size(size)
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.spend_step()
        for argument in (*args, *kwargs.values()):
            # A macro that calls itself with a doubled string grows it level by level.
            size = _size(argument)
            if size is not None:
                budget.check_size(size)
        # str.format is handed over wrapped by the sandbox; the method itself is __wrapped__.
        method = getattr(obj, "__wrapped__", obj)
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            name = getattr(method, "__name__", "")
            if name in _WIDTH_METHODS:
                _check_int_arguments(*args, *kwargs.values())
            elif name in ("format", "format_map"):
                _check_format_fields(owner)
        result = super().call(context, obj, *args, **kwargs)
        size = _size(result)
        if size is not None:
            budget.check_size(size)
        return result


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.spend_step()
        yield item


def _int_checked(function: Callable[..., Any]) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        # The first argument is the filtered value (or the environment); the others are widths,
        # counts and lengths that size the result.
        _check_int_arguments(*args[1:], *kwargs.values())
        return function(*args, **kwargs)

    return _like(checked, function)


def _format_checked(function: Callable[..., Any]) -> Callable[..., Any]:
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            _check_printf(value)
        return function(value, *args, **kwargs)

    return _like(checked, function)


def _replace_checked(function: Callable[..., Any]) -> Callable[..., Any]:
    def checked(context: Any, value: Any, old: Any, new: Any, count: Any = None) -> Any:
        if isinstance(value, str) and isinstance(old, str) and isinstance(new, str):
            times = value.count(old) if old else len(value) + 1
            if isinstance(count, int) and count >= 0:
                times = min(times, count)
            grown = len(value) + times * (len(new) - len(old))
            _budget().check_size(grown)
        return function(context, value, old, new, count)

    return _like(checked, function)


def _like(wrapper: Callable[..., Any], function: Callable[..., Any]) -> Callable[..., Any]:
    # Jinja reads how to call a filter (pass_context, pass_environment...) from the function.
    jinja_pass_arg = getattr(function, "jinja_pass_arg", None)
    if jinja_pass_arg is not None:
        wrapper.jinja_pass_arg = jinja_pass_arg  # type: ignore[attr-defined]
    return wrapper


ENVIRONMENT = BoundedSandbox()


def compile_template(tree: nodes.Template) -> Template:
    """The template of a parsed (and checked) tree, its loops and concatenations charged."""
    _instrument(tree)
    return ENVIRONMENT.from_string(tree)


def _instrument(tree: nodes.Template) -> None:
    # Jinja has no per-iteration hook: each loop's iterable is wrapped in a filter that charges one
    # step per item, so nested loops end at the budget instead of running for hours. `~` is no
    # interceptable operator: its result is checked the same way, so `{% set b = a ~ a %}` written
    # thirty times cannot double a string to gigabytes.
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _COUNTED, [], [], None, None, lineno=loop.lineno)
    for parent in list(tree.find_all(nodes.Node)):
        for name, value in parent.iter_fields():
            if isinstance(value, nodes.Concat):
                setattr(parent, name, _wrap_sized(value))
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, nodes.Concat):
                        value[index] = _wrap_sized(item)


def _wrap_sized(node: nodes.Concat) -> nodes.Filter:
    return nodes.Filter(node, _SIZED, [], [], None, None, lineno=node.lineno)


def private_attribute(tree: nodes.Template) -> str | None:
    """The first `_private` attribute the template reads, if any."""
    # The sandbox refuses these at render time too; refusing at load finds the mistake earlier.
    for node in tree.find_all((nodes.Getattr, nodes.Filter)):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            return node.attr
        if isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            argument = node.args[0]
            if isinstance(argument, nodes.Const) and str(argument.value).startswith("_"):
                return str(argument.value)
    return None
