"""Whatever a caller puts in a ToDo, the policy check answers (a decision or none), never
crashes: odd types where URLs, apps and recipients belong, deep values, odd text."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cpa_scheduler.domain import ToDo
from cpa_scheduler.policy import parse_policy

POLICY = parse_policy(
    "actions: {deny: [x]}\napps: {allow: [excel]}\nurls: {allow: [ok.example]}\n"
    "mail: {allow_domains: [ok.example]}\npii: {default_action: refuse}\n",
    source="hostile.yaml",
)

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=60),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
keys = st.sampled_from(["url", "app", "to", "cc", "bcc", "steps", "op", "body"]) | st.text(
    max_size=6
)


@settings(max_examples=300, deadline=None)
@given(
    action=st.sampled_from(["playwright", "send_mail", "open_app", "uia", "echo", "x"]),
    params=st.dictionaries(keys, json_values, max_size=6),
    text=st.text(max_size=200),
)
def test_any_todo_gets_an_answer(action: str, params: dict[str, Any], text: str) -> None:
    todo = ToDo(id="t", action=action, params=params, text=text)
    decisions = list(POLICY.todo_decisions(todo))
    assert all(d.rule and d.field for d in decisions)
    refusal = POLICY.first_refusal(todo)
    assert (refusal is None) == all(d.allowed for d in decisions)


def test_deeply_nested_params_are_walked_without_recursion() -> None:
    value: Any = "DE89370400440532013000"
    for _ in range(5000):
        value = {"url": 1, "inner": [value]}
    refusal = POLICY.first_refusal(ToDo(id="t", action="playwright", params={"v": value}))
    assert refusal is not None
    assert refusal.rule == "urls.allow"  # a url that is not a string, found first
