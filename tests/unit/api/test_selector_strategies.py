"""Every selector strategy of the contract, test_id included, reaches the domain, the store and
back; a value outside the enum is refused naming the field."""

from __future__ import annotations

import json

import pytest

from cpa.common.v1 import todo_pb2
from cpa_scheduler.api import convert
from cpa_scheduler.domain.errors import InvalidArgument
from cpa_scheduler.domain.todo import SelectorStrategy
from cpa_scheduler.storage.codec import todo_from_data, todo_to_data


@pytest.mark.parametrize(
    "strategy",
    [value for value in todo_pb2.SelectorStrategy.values() if value != 0],
)
def test_every_strategy_round_trips(strategy: todo_pb2.SelectorStrategy.ValueType) -> None:
    message = todo_pb2.ToDo(
        id="a",
        action=todo_pb2.ACTION_TYPE_CLICK,
        selector=todo_pb2.Selector(strategy=strategy, value="invoice-2024-05"),
    )
    todo = convert.todo_from_proto(message)
    assert todo.selector is not None
    stored = todo_from_data(json.loads(json.dumps(todo_to_data(todo))))
    assert stored == todo
    assert convert.todo_to_proto(stored).selector == message.selector


def test_test_id_is_a_strategy() -> None:
    message = todo_pb2.ToDo(
        id="a",
        action=todo_pb2.ACTION_TYPE_CLICK,
        selector=todo_pb2.Selector(strategy=todo_pb2.SELECTOR_STRATEGY_TEST_ID, value="pdf"),
    )
    todo = convert.todo_from_proto(message)
    assert todo.selector is not None
    assert todo.selector.strategy is SelectorStrategy.TEST_ID


def test_a_strategy_outside_the_enum_is_refused() -> None:
    message = todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CLICK)
    message.selector.strategy = 42  # type: ignore[assignment]
    message.selector.value = "#a"
    with pytest.raises(InvalidArgument) as caught:
        convert.todo_from_proto(message)
    assert caught.value.field == "todo.selector.strategy"
    assert "css, xpath, text, role, test_id" in str(caught.value)
