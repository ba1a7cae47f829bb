"""The params of the `playwright` action: what is accepted, and refusals that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from cpa.common.v1 import todo_pb2
from cpa_agent.executors.base import ExecutorError
from cpa_agent.executors.browser.params import (
    MAX_STEPS,
    Download,
    Fill,
    Goto,
    PlaywrightParams,
)
from cpa_agent.executors.params import InvalidParams, parse_params

from .conftest import Browser

CSS = {"css": "#a"}
TODO = todo_pb2.ToDo(id="t", action=todo_pb2.ACTION_TYPE_PLAYWRIGHT)


def validate_params(params: dict[str, Any]) -> PlaywrightParams:
    """As the agent's runner validates them."""
    parsed = parse_params(PlaywrightParams, TODO, params)
    assert isinstance(parsed, PlaywrightParams)
    return parsed


def test_one_op_is_read_as_one_step() -> None:
    params = validate_params({"op": "goto", "url": "http://127.0.0.1:8080/x"})
    assert params.steps == [Goto(op="goto", url="http://127.0.0.1:8080/x")]
    steps = validate_params(
        {
            "steps": [
                {"op": "fill", "selector": CSS, "secret": "portal_password", "timeout_s": 2},
                {"op": "download", "selector": {"test_id": "pdf"}, "artifact": "invoice"},
            ]
        }
    ).steps
    assert isinstance(steps[0], Fill)
    assert steps[0].secret == "portal_password"
    assert steps[0].timeout_s == 2
    assert isinstance(steps[1], Download)
    assert PlaywrightParams.model_validate({"op": "screenshot"}).steps[0].op == "screenshot"


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"op": "goto"}, "params.url", "Field required"),
        ({"op": "hover", "selector": CSS}, "params.op", "does not match"),
        ({"selector": CSS}, "params.steps", "Field required"),
        ({"steps": [{"selector": CSS}]}, "params.steps[0].op", "Unable to extract tag"),
        ({"op": "goto", "url": "file:///etc/passwd"}, "params.url", "http:// or https://"),
        ({"op": "goto", "url": "chrome://settings"}, "params.url", "http:// or https://"),
        ({"op": "goto", "url": "javascript:alert(1)"}, "params.url", "http:// or https://"),
        ({"op": "goto", "url": "http://x", "extra": 1}, "params.extra", "Extra inputs"),
        (
            {"op": "click", "selector": {"css": "#a", "xpath": "//a"}},
            "params.selector",
            "exactly one",
        ),
        ({"op": "click", "selector": {}}, "params.selector", "exactly one of css"),
        ({"op": "click", "selector": {"css": ""}}, "params.selector.css", "at least 1"),
        (
            {"op": "click", "selector": {"css": "#a", "name": "x"}},
            "params.selector",
            "only allowed with role",
        ),
        ({"op": "click", "selector": {"role": "Button!"}}, "params.selector.role", "pattern"),
        ({"op": "click", "selector": "#a"}, "params.selector", "valid dictionary"),
        ({"op": "click", "selector": CSS, "timeout_s": 0}, "params.timeout_s", "greater than 0"),
        ({"op": "click", "selector": CSS, "timeout_s": 1e9}, "params.timeout_s", "less than"),
        ({"op": "fill", "selector": CSS}, "params", "exactly one of value and secret"),
        ({"op": "fill", "selector": CSS, "value": "a", "secret": "b"}, "params", "exactly one"),
        ({"op": "fill", "selector": CSS, "secret": "a b"}, "params.secret", "pattern"),
        ({"op": "type", "selector": CSS}, "params", "exactly one of text and secret"),
        ({"op": "wait_for", "selector": CSS, "state": "gone"}, "params.state", "'attached'"),
        ({"op": "extract_text", "selector": CSS, "as": "a/b"}, "params.as", "pattern"),
        ({"op": "screenshot", "name": "../x"}, "params.name", "pattern"),
        ({"op": "download", "artifact": "a"}, "params", "exactly one of selector and url"),
        ({"op": "download", "selector": CSS, "artifact": "01-goto.png"}, "params", "reserved"),
        ({"op": "download", "url": "file:///etc/passwd", "artifact": "a"}, "params", "http://"),
        ({"op": "verify", "selector": CSS, "text": "a", "exists": True}, "params", "not both"),
        ({"steps": []}, "params.steps", "at least 1"),
        ({"steps": [{"op": "screenshot"}] * (MAX_STEPS + 1)}, "params.steps", "at most 50"),
        ({"steps": [{"op": "goto", "url": "http://x"}, {"op": "goto"}]}, "params.steps[1].url", ""),
        ({"steps": "goto"}, "params.steps", "valid list"),
        ({}, "params.steps", "Field required"),
        (
            {
                "steps": [
                    {"op": "extract_text", "selector": CSS},
                    {"op": "extract_text", "selector": CSS},
                ]
            },
            "params.steps[1].as",
            "repeats the as of steps[0]",
        ),
    ],
)
def test_bad_params_are_refused_naming_the_field(
    params: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(InvalidParams) as caught:
        validate_params(params)
    assert caught.value.field == field
    assert says in caught.value.message


def test_a_refusal_never_quotes_the_value() -> None:
    with pytest.raises(InvalidParams) as caught:
        validate_params({"op": "fill", "selector": CSS, "value": 12345678})
    assert "12345678" not in str(caught.value)
    assert "12345678" not in repr(caught.value.details())


async def test_the_executor_refuses_bad_params_before_any_browser_work(browser: Browser) -> None:
    with pytest.raises(ExecutorError) as caught:
        await browser.run(params={"op": "goto", "url": "file:///etc/passwd"})
    assert caught.value.code == "INVALID_PARAMS"
    assert not caught.value.retryable
    assert caught.value.details["field"] == "params.url"
    assert browser.pool.launches == 0
