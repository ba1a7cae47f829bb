"""From a selector (params or ToDo.selector) to a Playwright locator.

Locators are strict: an action on a selector that matches several elements fails
(SELECTOR_AMBIGUOUS) instead of acting on whichever came first.
"""

from __future__ import annotations

import re
from typing import Any, cast

from playwright.async_api import Locator, Page
from pydantic import ValidationError

from cpa.common.v1 import todo_pb2
from cpa_agent.executors.base import ExecutorError
from cpa_agent.executors.browser.params import Selector
from cpa_agent.executors.params import INVALID_PARAMS

# ToDo.selector's role strategy reads "button" or "button[name=Export]" (todo.proto); quotes
# around the name are allowed: button[name="Export all"].
_ROLE_VALUE = re.compile(
    r"^\s*([a-z]+)\s*"
    r"(?:\[\s*name\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\]]*))\s*\])?\s*$"
)

_TODO_STRATEGIES = {
    todo_pb2.SELECTOR_STRATEGY_CSS: "css",
    todo_pb2.SELECTOR_STRATEGY_XPATH: "xpath",
    todo_pb2.SELECTOR_STRATEGY_TEXT: "text",
    todo_pb2.SELECTOR_STRATEGY_TEST_ID: "test_id",
}


def locate(page: Page, selector: Selector) -> Locator:
    """The locator of `selector` on `page` (nothing is looked up until it is used)."""
    if selector.css is not None:
        return page.locator(f"css={selector.css}")
    if selector.xpath is not None:
        return page.locator(f"xpath={selector.xpath}")
    if selector.text is not None:
        return page.get_by_text(selector.text, exact=selector.exact)
    if selector.test_id is not None:
        return page.get_by_test_id(selector.test_id)
    assert selector.role is not None  # the model admits exactly one strategy
    # Playwright types the role as a Literal of ARIA roles; the model checked its shape and an
    # unknown role simply matches nothing (ELEMENT_NOT_FOUND names it).
    return page.get_by_role(cast(Any, selector.role), name=selector.name, exact=selector.exact)


def from_todo(todo: todo_pb2.ToDo) -> Selector:
    """The selector of a UI action (ToDo.selector), or INVALID_PARAMS naming the field."""
    if not todo.HasField("selector"):
        raise ExecutorError(
            INVALID_PARAMS,
            "todo.selector: this action needs a selector",
            retryable=False,
            details={"field": "todo.selector"},
        )
    strategy, value = todo.selector.strategy, todo.selector.value
    fields: dict[str, Any]
    if strategy == todo_pb2.SELECTOR_STRATEGY_ROLE:
        match = _ROLE_VALUE.match(value)
        if match is None:
            raise _bad_selector(
                "todo.selector.value",
                "a role selector reads 'role' or 'role[name=Accessible name]'",
            )
        role, *names = match.groups()
        name = next((n for n in names if n is not None), None)
        fields = {"role": role, "name": name.strip() if name is not None else None}
        if fields["name"] == "":
            fields["name"] = None
    elif strategy in _TODO_STRATEGIES:
        fields = {_TODO_STRATEGIES[strategy]: value}
    else:
        raise _bad_selector(
            "todo.selector.strategy", "must be one of css, xpath, text, role, test_id"
        )
    try:
        return Selector.model_validate(fields)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise _bad_selector("todo.selector.value", message) from None


def _bad_selector(field: str, message: str) -> ExecutorError:
    return ExecutorError(
        INVALID_PARAMS, f"{field}: {message}", retryable=False, details={"field": field}
    )
