"""The prompts render from their Jinja2 files with all they promise, and nothing undefined."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import UndefinedError
from jinja2.exceptions import SecurityError

from cpa_scheduler.memory.interface import ConversationEntry, MemoryHit, MemoryRecord
from cpa_scheduler.planning import load_default_catalog, prompts
from cpa_scheduler.planning.actions import ActionCatalog
from cpa_scheduler.planning.prompts import _ENVIRONMENT, Prompts
from cpa_scheduler.planning.task_plan import Problem
from cpa_scheduler.policy import parse_policy


def test_classification_lists_every_intent_with_parameters_and_phrasings() -> None:
    catalog = load_default_catalog()
    system, user = Prompts.of(catalog).classification("mail the March invoice to a@b.example")
    for intent in catalog.intents:
        assert f"- {intent.name}: {intent.description}" in system.content
    assert "parameter recipient (required)" in system.content
    assert "recognised phrasing:" in system.content
    assert user.content == "Request: mail the March invoice to a@b.example"


def test_planning_prompt_has_actions_policy_memories_and_conversation() -> None:
    hit = MemoryHit(
        record=MemoryRecord(memory_id="m1", tenant="t", text="say hi", plan=[{"id": "x"}]),
        score=0.9,
    )
    failed = MemoryHit(
        record=MemoryRecord(
            memory_id="m2",
            tenant="t",
            text="say hi twice",
            outcome="failed",
            failure_reason="agent lost",
        ),
        score=0.8,
    )
    system, user = prompts.planning(
        "say hello",
        actions=ActionCatalog.build([(["echo", "click"], ["browser:chromium"])]),
        context={"portal": "p.example"},
        policy=parse_policy("actions: {deny: [uia]}\n", source="t.yaml"),
        memories=[hit, failed],
        conversation=[ConversationEntry(role="user", text="earlier words")],
    )
    assert "- click (needs a selector)" in system.content
    assert "served with capabilities: browser:chromium" in system.content
    assert "actions denied: uia" in system.content
    assert '- request: say hi\n  tasks: [{"id": "x"}]' in system.content
    assert "failed because: agent lost" in system.content
    assert "user: earlier words" in user.content
    assert 'Request context: {"portal": "p.example"}' in user.content
    assert user.content.endswith("Request: say hello")


def test_the_shipped_schemas_are_in_the_planning_prompt() -> None:
    system, _ = prompts.planning("x", actions=ActionCatalog.build())
    assert '"seconds"' in system.content  # wait's params schema


def test_repair_lists_the_problems() -> None:
    message = prompts.repair([Problem("tasks[0].action", "unknown action 'x'")])
    assert "- tasks[0].action: unknown action 'x'" in message.content


def test_templates_are_strict_and_sandboxed() -> None:
    with pytest.raises(UndefinedError):
        _ENVIRONMENT.from_string("{{ missing }}").render()
    with pytest.raises(SecurityError):
        _ENVIRONMENT.from_string("{{ x.__class__.__mro__ }}").render(x=1)


TEMPLATE_SYNTAX = ["{{ 7*7 }}", "{% for x in range(10**9) %}x{% endfor %}", "{{ ''.__class__ }}"]


CATALOG_PROMPTS = Prompts.of(load_default_catalog())


# No deadline: a loaded shared machine is not a failure of the property.
@settings(deadline=None)
@given(text=st.text(max_size=300) | st.sampled_from(TEMPLATE_SYNTAX))
def test_callers_text_and_context_are_data_never_template(text: str) -> None:
    classification = CATALOG_PROMPTS.classification(text)
    assert classification[1].content == f"Request: {text}".strip()
    _, user = prompts.planning(text, actions=ActionCatalog.build(), context={"k": text})
    assert user.content.endswith(f"Request: {text}".rstrip())
