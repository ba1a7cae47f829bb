"""ToDo.validate: each malformed field is reported with its reason, field path and message."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cpa_scheduler.domain import (
    ActionType,
    InvalidArgument,
    Reason,
    RetryPolicy,
    Selector,
    SelectorStrategy,
    ToDo,
)

ID_RULE = "must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
ACTION_RULE = "must be 1-63 lower-case letters, digits, '_', '.' or '-', starting with a letter"


def make(**fields: Any) -> ToDo:
    defaults: dict[str, Any] = {"id": "a", "action": "click"}
    return ToDo(**(defaults | fields))


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"id": "A1"},
        {"id": "9-lives"},
        {"id": "x" * 63},
        {"id": "step_1.b-2"},
        {"action": "sap.post_invoice"},
        {"action": "x"},
        {"action": "custom-action_2"},
        {"timeout_s": 0.001},
        {"selector": Selector(strategy=SelectorStrategy.CSS, value="#ok")},
        {"retry_policy": RetryPolicy(max_attempts=5)},
    ],
)
def test_valid_todo_passes(fields: dict[str, Any]) -> None:
    make(**fields).validate()


@pytest.mark.parametrize(
    ("fields", "reason", "field", "message"),
    [
        ({"id": ""}, Reason.MISSING_FIELD, "id", "task id is required"),
        ({"id": "-a"}, Reason.INVALID_FIELD, "id", f"task id '-a' {ID_RULE}"),
        ({"id": "has space"}, Reason.INVALID_FIELD, "id", f"task id 'has space' {ID_RULE}"),
        ({"id": "x" * 64}, Reason.INVALID_FIELD, "id", f"task id '{'x' * 64}' {ID_RULE}"),
        ({"id": "a/b"}, Reason.INVALID_FIELD, "id", f"task id 'a/b' {ID_RULE}"),
        ({"action": ""}, Reason.MISSING_FIELD, "action", "task 'a' has no action"),
        (
            {"action": "Click"},
            Reason.UNKNOWN_ACTION,
            "action",
            f"task 'a': custom action 'Click' {ACTION_RULE}",
        ),
        (
            {"action": "1st"},
            Reason.UNKNOWN_ACTION,
            "action",
            f"task 'a': custom action '1st' {ACTION_RULE}",
        ),
        (
            {"timeout_s": 0.0},
            Reason.INVALID_FIELD,
            "timeout",
            "task 'a': timeout must be positive and finite, got 0 s",
        ),
        (
            {"timeout_s": -1.5},
            Reason.INVALID_FIELD,
            "timeout",
            "task 'a': timeout must be positive and finite, got -1.5 s",
        ),
        (
            {"timeout_s": math.nan},
            Reason.INVALID_FIELD,
            "timeout",
            "task 'a': timeout must be positive and finite, got nan s",
        ),
        (
            {"timeout_s": math.inf},
            Reason.INVALID_FIELD,
            "timeout",
            "task 'a': timeout must be positive and finite, got inf s",
        ),
        (
            {"selector": Selector(strategy=SelectorStrategy.XPATH, value="")},
            Reason.MISSING_FIELD,
            "selector.value",
            "task 'a': selector value is empty",
        ),
    ],
)
@pytest.mark.parametrize("prefix", ["todo", "todos[4]"])
def test_invalid_todo_names_the_field(
    fields: dict[str, Any], reason: Reason, field: str, message: str, prefix: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        make(**fields).validate(prefix)

    assert caught.value.reason is reason
    assert caught.value.field == f"{prefix}.{field}"
    assert caught.value.message == message


def test_default_prefix_is_todo() -> None:
    with pytest.raises(InvalidArgument) as caught:
        make(id="").validate()

    assert caught.value.field == "todo.id"


def test_retry_policy_errors_carry_the_todo_prefix() -> None:
    policy = RetryPolicy()
    # A RetryPolicy validates itself on construction; bypass that to reach ToDo.validate's check.
    object.__setattr__(policy, "jitter", 2.0)

    with pytest.raises(InvalidArgument) as caught:
        make(retry_policy=policy).validate("todos[1]")

    assert caught.value.reason is Reason.INVALID_RETRY_POLICY
    assert caught.value.field == "todos[1].retry_policy.jitter"
    assert caught.value.message == "jitter must be between 0 and 1, got 2"


@pytest.mark.parametrize("action", list(ActionType))
def test_builtin_actions(action: ActionType) -> None:
    todo = make(action=action.value)

    assert todo.is_builtin_action
    todo.validate()


@pytest.mark.parametrize("action", ["sap.post_invoice", "clicks", "send-mail"])
def test_custom_actions_are_not_builtin(action: str) -> None:
    assert not make(action=action).is_builtin_action
