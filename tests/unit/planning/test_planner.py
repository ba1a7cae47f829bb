"""Planner: text, intent and explicit requests all end as a checked TaskGraph (or `unknown`)."""

from __future__ import annotations

import pytest

from cpa_scheduler.domain import InvalidArgument, Reason, ToDo
from cpa_scheduler.planning import (
    IntentRequest,
    Planner,
    PlanRequest,
    RuleIntentRouter,
    TextRequest,
    TodoRequest,
    load_default_catalog,
)


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner(RuleIntentRouter(load_default_catalog()), max_tasks=50)


def test_text_is_routed_and_planned_as_a_chain(planner: Planner) -> None:
    plan = planner.plan(
        TextRequest("Download the invoice 42 from the portal and mail it to bob@example.com")
    )
    assert plan.matched
    assert plan.intent == "portal_download_and_mail"
    assert plan.graph is not None
    batches = plan.graph.parallel_batches()
    # The browser steps share one session (one at a time); the mail waits for the download.
    assert batches == (("login",), ("download",), ("send",))
    assert set(plan.graph.dependencies("send")) == {"download"}


def test_text_matching_nothing_is_unknown_with_candidates(planner: Planner) -> None:
    unmatched = planner.plan(TextRequest("downlod invoice from portal"))
    assert not unmatched.matched
    assert unmatched.intent == "unknown"
    assert unmatched.graph is None
    assert unmatched.candidates[0].intent == "portal_download_and_mail"
    nothing_close = planner.plan(TextRequest("water the plants"))
    assert (nothing_close.intent, nothing_close.candidates) == ("unknown", ())


def test_intent_by_name_keeps_its_parameters(planner: Planner) -> None:
    plan = planner.plan(
        IntentRequest("send_mail", {"recipient": "bob@example.com", "subject": "Invoice 42"})
    )
    assert plan.intent == "send_mail"
    assert plan.parameters == {"recipient": "bob@example.com", "subject": "Invoice 42"}
    assert plan.graph is not None
    (todo,) = plan.graph.todos
    assert todo.action == "send_mail"
    assert todo.params["to"] == "bob@example.com"


def test_explicit_todos_are_checked_as_a_graph(planner: Planner) -> None:
    todos = [
        ToDo(id="a", action="noop", depends_on=("b",)),
        ToDo(id="b", action="noop", depends_on=("a",)),
    ]
    with pytest.raises(InvalidArgument) as caught:
        planner.plan(TodoRequest(todos))
    assert caught.value.reason is Reason.GRAPH_CYCLE
    assert caught.value.message == "dependency cycle: a -> b -> a"


def test_explicit_todos_plan_has_no_intent(planner: Planner) -> None:
    plan = planner.plan(TodoRequest([ToDo(id="only", action="echo")]))
    assert plan.intent == ""
    assert plan.graph is not None
    assert plan.graph.topological_order() == ("only",)


def test_too_many_tasks_is_payload_too_large() -> None:
    small = Planner(RuleIntentRouter(load_default_catalog()), max_tasks=2)
    todos = [ToDo(id=f"t{i}", action="noop") for i in range(3)]
    with pytest.raises(InvalidArgument) as caught:
        small.plan(TodoRequest(todos))
    assert caught.value.reason is Reason.PAYLOAD_TOO_LARGE
    assert caught.value.field == "todos"
    assert caught.value.message == "a job may have at most 2 tasks, got 3"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            IntentRequest("forward_invoice", {"month": "2026-11", "recipient": "a@b.example"}),
            "intent",
        ),
        (TextRequest("forward the November invoice from the portal to a@b.example"), "text"),
    ],
    ids=["intent", "text"],
)
def test_too_many_planned_tasks_name_what_they_were_planned_from(
    request_: PlanRequest, field: str
) -> None:
    # The caller sent no todos: the error names the intent or text the tasks came from.
    tiny = Planner(RuleIntentRouter(load_default_catalog()), max_tasks=1)
    with pytest.raises(InvalidArgument) as caught:
        tiny.plan(request_)
    assert (caught.value.reason, caught.value.field) == (Reason.PAYLOAD_TOO_LARGE, field)


def test_unknown_intent_name_is_an_error(planner: Planner) -> None:
    with pytest.raises(InvalidArgument) as caught:
        planner.plan(IntentRequest("send_mial", {}))
    assert caught.value.reason is Reason.UNKNOWN_INTENT
    assert "send_mail" in caught.value.message
