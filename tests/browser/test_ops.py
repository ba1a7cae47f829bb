"""Every op and selector strategy against real Chromium, and the UI actions click, type and
wait_for with ToDo.selector and ToDo.text."""

from __future__ import annotations

import pytest

from cpa.common.v1 import todo_pb2
from cpa_agent.executors.base import ExecutorError
from cpa_agent.executors.browser import browser_executors
from tests.fixtures.browser_portal import PASSWORD, Portal

from .conftest import Browser, chromium_settings, login_steps

NAV = {"role": "navigation", "name": "Main"}
EXPORT = {"role": "button", "name": "Export"}
CSS, XPATH, TEXT, ROLE, TEST_ID, UNSET = (
    todo_pb2.SELECTOR_STRATEGY_CSS,
    todo_pb2.SELECTOR_STRATEGY_XPATH,
    todo_pb2.SELECTOR_STRATEGY_TEXT,
    todo_pb2.SELECTOR_STRATEGY_ROLE,
    todo_pb2.SELECTOR_STRATEGY_TEST_ID,
    todo_pb2.SELECTOR_STRATEGY_UNSPECIFIED,
)
CLICK, TYPE, WAIT_FOR = (
    todo_pb2.ACTION_TYPE_CLICK,
    todo_pb2.ACTION_TYPE_TYPE,
    todo_pb2.ACTION_TYPE_WAIT_FOR,
)


async def test_every_selector_strategy_finds_its_element(browser: Browser, portal: Portal) -> None:
    outputs, outcome = await browser.run(
        params={
            "steps": [
                {"op": "goto", "url": portal.url("/selectors")},
                {"op": "extract_text", "selector": {"css": "#by-css"}, "as": "css"},
                {
                    "op": "extract_text",
                    "selector": {"xpath": "//div/span[@class='x']"},
                    "as": "xpath",
                },
                {"op": "extract_text", "selector": {"text": "by text only"}, "as": "text"},
                {
                    "op": "extract_text",
                    "selector": {"text": "found by text only", "exact": True},
                    "as": "exact",
                },
                {
                    "op": "extract_text",
                    "selector": {"role": "navigation", "name": "Main"},
                    "as": "role",
                },
                {
                    "op": "extract_text",
                    "selector": {"role": "button", "name": "Export"},
                    "as": "button",
                },
                {"op": "extract_text", "selector": {"test_id": "total"}, "as": "test_id"},
            ]
        }
    )
    assert outputs["texts"] == {
        "css": "found by css",
        "xpath": "found by xpath",
        "text": "found by text only",
        "exact": "found by text only",
        "role": "navigation by role",
        "button": "Export all",
        "test_id": "1 234,56 EUR",
    }
    assert outputs["artifacts"] == [
        f"{i:02d}-{op}.png" for i, op in enumerate(["goto"] + ["extract_text"] * 7, start=1)
    ]
    assert outcome.names == sorted(outputs["artifacts"])


async def test_fill_type_press_select_and_click(browser: Browser, portal: Portal) -> None:
    outputs, _ = await browser.run(
        params={
            "steps": [
                {"op": "goto", "url": portal.url("/selectors")},
                {"op": "fill", "selector": {"css": "#name"}, "value": "Ada"},
                {"op": "type", "selector": {"css": "#name"}, "text": " Lovelace"},
                {"op": "press", "selector": {"css": "#name"}, "key": "Backspace"},
                {"op": "press", "key": "Tab"},
                {"op": "extract_text", "selector": {"css": "#typed"}, "as": "typed"},
                {"op": "click", "selector": {"role": "button", "name": "Reveal"}},
                {"op": "wait_for", "selector": {"css": "#later"}},
                {"op": "verify", "selector": {"css": "#later"}, "text": "revealed"},
                {"op": "verify", "selector": {"css": "#never"}, "exists": False},
                {"op": "wait_for", "selector": {"css": "#hidden"}, "state": "hidden"},
            ]
        }
    )
    assert outputs["texts"] == {"typed": "Ada Lovelac"}

    await browser.run(params=login_steps(portal))
    outputs, _ = await browser.run(
        params={
            "steps": [
                {"op": "select", "selector": {"css": "#month"}, "value": "May 2024"},
                {"op": "screenshot", "name": "chosen", "full_page": True},
                {"op": "screenshot"},
            ]
        }
    )
    assert outputs["artifacts"] == ["01-select.png", "02-chosen.png", "03-screenshot.png"]
    page = await browser.pool.get("job-1", "browser").page()  # type: ignore[union-attr]
    assert await page.locator("#month").input_value() == "2024-05"


async def test_download_by_url_and_the_size_limit(browser: Browser, portal: Portal) -> None:
    await browser.run(params=login_steps(portal))
    outputs, outcome = await browser.run(
        params={"op": "download", "url": portal.url("/invoices/2024-04.pdf"), "artifact": "april"}
    )
    assert outcome.data("april") == portal.pdfs["2024-04"]
    assert outputs["downloads"]["april"]["filename"] == "invoice-2024-04.pdf"


async def test_a_download_over_the_limit_is_refused(portal: Portal) -> None:
    executors = browser_executors(chromium_settings(max_download_bytes=1000))
    small = Browser({executor.action: executor for executor in executors})
    try:
        await small.run(params=login_steps(portal))
        with pytest.raises(ExecutorError) as caught:
            await small.run(
                params={"op": "download", "selector": {"css": "#big"}, "artifact": "everything"}
            )
    finally:
        await executors[0].aclose()
    assert caught.value.code == "DOWNLOAD_TOO_LARGE"
    assert not caught.value.retryable
    assert caught.value.details["size_bytes"] == portal.big_bytes
    assert "everything" not in caught.value.details["artifacts"]


async def test_a_click_that_starts_no_download_fails_retryable(
    browser: Browser, portal: Portal
) -> None:
    await browser.run(params={"op": "goto", "url": portal.url("/selectors")})
    with pytest.raises(ExecutorError) as caught:
        await browser.run(
            params={
                "op": "download",
                "selector": {"css": "#reveal"},
                "artifact": "nothing",
                "timeout_s": 0.5,
            }
        )
    assert caught.value.code == "DOWNLOAD_FAILED"
    assert caught.value.retryable
    assert "clicking css '#reveal' started no download within 0.5s" in caught.value.message


@pytest.mark.parametrize(
    ("path", "retryable", "says"),
    [
        ("/missing", False, "answered HTTP 404"),
        ("/broken", True, "answered HTTP 500"),
        ("/invoices/2024-04.pdf", False, "answered HTTP 403"),
    ],
)
async def test_goto_fails_by_status(
    browser: Browser, portal: Portal, path: str, retryable: bool, says: str
) -> None:
    with pytest.raises(ExecutorError) as caught:
        await browser.run(params={"op": "goto", "url": portal.url(path)})
    assert caught.value.code == "NAVIGATION_FAILED"
    assert caught.value.retryable is retryable
    assert says in caught.value.message
    assert caught.value.details["screenshot"] == "01-goto-error.png"


async def test_goto_to_nothing_and_to_an_attachment(browser: Browser, portal: Portal) -> None:
    with pytest.raises(ExecutorError) as caught:
        await browser.run(params={"op": "goto", "url": "http://127.0.0.1:9/"})
    assert caught.value.code == "NAVIGATION_FAILED"
    assert caught.value.retryable
    assert "net::ERR_" in caught.value.message

    # Names other than localhost do not resolve (the resolver rules): nothing leaves the machine.
    with pytest.raises(ExecutorError) as caught:
        await browser.run(params={"op": "goto", "url": "http://portal.example/"})
    assert "net::ERR_NAME_NOT_RESOLVED" in caught.value.message

    await browser.run(params=login_steps(portal))
    with pytest.raises(ExecutorError) as caught:
        await browser.run(params={"op": "goto", "url": portal.url("/invoices/2024-05.pdf")})
    assert caught.value.code == "NAVIGATION_FAILED"
    assert not caught.value.retryable
    assert "use the download op" in caught.value.message


@pytest.mark.parametrize(
    ("op", "code", "retryable", "says"),
    [
        (
            {"op": "click", "selector": {"css": ".twin"}},
            "SELECTOR_AMBIGUOUS",
            False,
            "css '.twin' matched more than one element",
        ),
        (
            {"op": "click", "selector": {"css": "#hidden"}, "timeout_s": 0.5},
            "ELEMENT_NOT_ACTIONABLE",
            True,
            "css '#hidden' matched 1 element(s), but click could not act on it within 0.5s",
        ),
        (
            {"op": "fill", "selector": {"css": "#disabled"}, "value": "x", "timeout_s": 0.5},
            "ELEMENT_NOT_ACTIONABLE",
            True,
            "css '#disabled' matched 1 element(s)",
        ),
        (
            {"op": "wait_for", "selector": {"css": "#by-css"}, "state": "hidden", "timeout_s": 0.5},
            "ELEMENT_STILL_PRESENT",
            True,
            "css '#by-css' was still visible after 0.5s",
        ),
        (
            {"op": "verify", "selector": {"css": "#by-css"}, "exists": False, "timeout_s": 0.5},
            "VERIFY_FAILED",
            False,
            "expected css '#by-css' to be absent; it stayed within 0.5s",
        ),
        (
            {"op": "press", "key": "NoSuchKey"},
            "INVALID_PARAMS",
            False,
            "params.steps[0].key: unknown key 'NoSuchKey'",
        ),
    ],
)
async def test_failures_say_what_went_wrong(
    browser: Browser, portal: Portal, op: dict[str, object], code: str, retryable: bool, says: str
) -> None:
    await browser.run(params={"op": "goto", "url": portal.url("/selectors")})
    with pytest.raises(ExecutorError) as caught:
        await browser.run(params=op)
    assert caught.value.code == code
    assert caught.value.retryable is retryable
    assert says in caught.value.message
    assert caught.value.details["url"] == portal.url("/selectors")
    assert caught.value.details["screenshot"] == f"01-{op['op']}-error.png"


def _ui(
    action: todo_pb2.ActionType.ValueType,
    strategy: int,
    value: str,
    text: str = "",
) -> todo_pb2.ToDo:
    return todo_pb2.ToDo(
        id="ui",
        action=action,
        # An int: the tests send values outside the enum too.
        selector=todo_pb2.Selector(
            strategy=todo_pb2.SelectorStrategy.ValueType(strategy), value=value
        ),
        text=text,
    )


async def test_ui_actions_read_todo_selector_and_text(browser: Browser, portal: Portal) -> None:
    await browser.run(params={"op": "goto", "url": portal.url("/login")})
    steps = [
        _ui(todo_pb2.ACTION_TYPE_TYPE, todo_pb2.SELECTOR_STRATEGY_CSS, "#user", "alice"),
        _ui(
            todo_pb2.ACTION_TYPE_TYPE, todo_pb2.SELECTOR_STRATEGY_XPATH, "//input[@name='password']"
        ),
        _ui(todo_pb2.ACTION_TYPE_CLICK, todo_pb2.SELECTOR_STRATEGY_ROLE, 'button[name="Sign in"]'),
        _ui(todo_pb2.ACTION_TYPE_WAIT_FOR, todo_pb2.SELECTOR_STRATEGY_TEXT, "Invoices of alice"),
        _ui(todo_pb2.ACTION_TYPE_CLICK, todo_pb2.SELECTOR_STRATEGY_TEST_ID, "invoice-2024-04"),
    ]
    steps[1].params.update({"secret": "portal_password"})
    outputs = []
    for todo in steps:
        out, outcome = await browser.run(todo=todo)
        action = todo_pb2.ActionType.Name(todo.action).removeprefix("ACTION_TYPE_").lower()
        assert outcome.names == [f"01-{action}.png"]
        outputs.append(out)
    assert outputs[2]["url"] == portal.url("/invoices")
    assert portal.served("/invoices") == [True]
    assert PASSWORD not in repr(outputs)


@pytest.mark.parametrize(
    ("todo", "field"),
    [
        (todo_pb2.ToDo(id="ui", action=todo_pb2.ACTION_TYPE_CLICK), "todo.selector"),
        (
            _ui(todo_pb2.ACTION_TYPE_CLICK, todo_pb2.SELECTOR_STRATEGY_ROLE, "button[x=y]"),
            "todo.selector.value",
        ),
        (
            _ui(todo_pb2.ACTION_TYPE_CLICK, todo_pb2.SELECTOR_STRATEGY_UNSPECIFIED, "#a"),
            "todo.selector.strategy",
        ),
        (_ui(todo_pb2.ACTION_TYPE_CLICK, 99, "#a"), "todo.selector.strategy"),
        (
            _ui(todo_pb2.ACTION_TYPE_CLICK, todo_pb2.SELECTOR_STRATEGY_CSS, ""),
            "todo.selector.value",
        ),
        (_ui(todo_pb2.ACTION_TYPE_TYPE, todo_pb2.SELECTOR_STRATEGY_CSS, "#a"), "todo.text"),
    ],
)
async def test_ui_actions_refuse_what_they_cannot_use(
    browser: Browser, todo: todo_pb2.ToDo, field: str
) -> None:
    with pytest.raises(ExecutorError) as caught:
        await browser.run(todo=todo)
    assert caught.value.code == "INVALID_PARAMS"
    assert not caught.value.retryable
    assert caught.value.details["field"] == field
    assert browser.pool.launches == 0  # refused before any browser work


async def test_ui_action_params_are_checked(browser: Browser) -> None:
    todo = _ui(WAIT_FOR, CSS, "#a")
    todo.params.update({"state": "gone"})
    with pytest.raises(ExecutorError) as caught:
        await browser.run(todo=todo)
    assert caught.value.details["field"] == "params.state"
