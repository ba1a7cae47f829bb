"""Our checks of a model's TaskPlan: every problem listed with its field, nothing invalid passes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cpa_agent.executors.browser.params import PlaywrightParams
from cpa_scheduler.planning.actions import ActionCatalog
from cpa_scheduler.planning.task_plan import MAX_PARAMS_DEPTH, Checked, TaskPlan, check
from cpa_scheduler.policy import parse_policy

SHIPPED = ActionCatalog.build()


def task(id: str, action: str, params: Any = None, **more: Any) -> dict[str, Any]:
    return {"id": id, "action": action, "params_json": json.dumps(params or {}), **more}


def checked(*tasks: dict[str, Any], actions: ActionCatalog = SHIPPED, **kwargs: Any) -> Checked:
    return check(
        TaskPlan.model_validate({"reasoning": "r", "tasks": list(tasks)}),
        actions=actions,
        max_tasks=kwargs.pop("max_tasks", 10),
        **kwargs,
    )


def fields(result: Checked) -> list[str]:
    assert result.todos is None
    return [problem.field for problem in result.problems]


def test_a_valid_chain_passes_with_inputs_upstream() -> None:
    result = checked(
        task("first", "echo", {"greeting": "hi"}),
        task(
            "second",
            "echo",
            depends_on=["first"],
            inputs=[{"name": "said", "task_id": "first", "output_key": "greeting"}],
        ),
        task("pause", "wait", {"seconds": 0}, depends_on=["second"]),
    )
    assert result.problems == ()
    assert result.todos is not None
    assert [todo.id for todo in result.todos] == ["first", "second", "pause"]
    assert result.todos[1].inputs["said"].task_id == "first"


def test_an_artifact_input_attaches_a_file_and_needs_exactly_one_source() -> None:
    download = task("get", "noop")
    mail = {"to": "a@b.example"}  # one string of addresses, as the mail executor takes it

    def attach(**ref: str) -> dict[str, Any]:
        inputs = [{"name": "invoice", "task_id": "get", **ref}]
        return task("send", "send_mail", mail, depends_on=["get"], inputs=inputs)

    result = checked(download, attach(artifact_name="invoice.pdf"))
    assert result.todos is not None, result.problems
    assert result.todos[1].inputs["invoice"].artifact_name == "invoice.pdf"
    both = checked(download, attach(artifact_name="invoice.pdf", output_key="path"))
    assert fields(both) == ["tasks[1].inputs[invoice].artifact_name"]
    assert fields(checked(download, attach())) == ["tasks[1].inputs[invoice].output_key"]


def test_unknown_action_is_named_with_the_known_ones() -> None:
    result = checked(task("a", "launch_rockets"))
    assert fields(result) == ["tasks[0].action"]
    assert "echo" in result.problems[0].message


def test_params_are_checked_against_the_executors_schema() -> None:
    result = checked(task("a", "wait", {"seconds": "soon", "extra": 1}))
    assert sorted(fields(result)) == ["tasks[0].params", "tasks[0].params.seconds"]


def test_a_step_of_a_union_gets_the_errors_of_the_branch_its_op_names() -> None:
    # playwright's steps are one schema per op: a click without its selector is told what it
    # lacks, not that it fits none of the eleven schemas.
    steps = [{"op": "goto", "url": "https://portal.example"}, {"op": "click"}]
    result = checked(task("login", "playwright", {"steps": steps}))
    assert fields(result) == ["tasks[0].params.steps[1]"]
    assert result.problems[0].message == "'selector' is a required property"
    # An op no branch names keeps the union's own error.
    unknown = checked(task("login", "playwright", {"steps": [{"op": "teleport"}]}))
    assert fields(unknown) == ["tasks[0].params.steps[0]"]


def test_a_single_playwright_op_validates_as_the_agent_accepts_it() -> None:
    # The executor reads params with `op` as one step (PlaywrightParams); the shipped schema
    # says so, and a plan using that form runs with its params as written.
    op = {"op": "goto", "url": "https://portal.example/invoices"}
    result = checked(task("open", "playwright", op))
    assert result.todos is not None, result.problems
    assert result.todos[0].params == op
    # A single op that does not fit is told what its own schema wants, at params.
    click = checked(task("login", "playwright", {"op": "click"}))
    assert fields(click) == ["tasks[0].params"]
    assert click.problems[0].message == "'selector' is a required property"
    # Neither form: the steps form's requirement.
    neither = checked(task("login", "playwright", {"url": "https://portal.example"}))
    assert "'steps' is a required property" in [p.message for p in neither.problems]


@pytest.mark.parametrize(
    "params",
    [
        {"op": "goto", "url": "https://portal.example"},
        {"op": "click", "selector": {"css": "#login"}, "timeout_s": 5},
        {"op": "click"},
        {"op": "teleport"},
        {"op": "goto", "url": "https://portal.example", "steps": []},
        {"steps": [{"op": "screenshot"}]},
        {"steps": []},
        {"url": "https://portal.example"},
        {},
    ],
    ids=repr,
)
def test_the_playwright_schema_and_the_executor_agree(params: dict[str, Any]) -> None:
    try:
        PlaywrightParams.model_validate(params)
        accepted = True
    except ValidationError:
        accepted = False
    assert (checked(task("t", "playwright", params)).todos is not None) == accepted


def test_every_task_is_checked_in_one_round() -> None:
    result = checked(task("a", "nope"), task("b", "wait", {}), task("c", "echo"))
    assert fields(result) == ["tasks[0].action", "tasks[1].params"]


def test_a_cycle_is_refused() -> None:
    result = checked(task("a", "noop", depends_on=["b"]), task("b", "noop", depends_on=["a"]))
    assert len(fields(result)) == 1
    assert "cycle" in result.problems[0].message


def test_unknown_dependency_and_input_not_upstream_are_refused() -> None:
    assert fields(checked(task("a", "noop", depends_on=["ghost"]))) == ["tasks[0].depends_on[0]"]
    not_upstream = checked(
        task("a", "noop"),
        task("b", "echo", inputs=[{"name": "x", "task_id": "a", "output_key": "k"}]),
    )
    assert fields(not_upstream)[0].startswith("tasks[1].inputs")


def test_ui_action_without_selector_is_refused_and_bad_strategy_named() -> None:
    catalog = ActionCatalog.build([(["click", "noop"], ["browser:chromium"])])
    assert fields(checked(task("a", "click"), actions=catalog)) == ["tasks[0].selector"]
    bad = checked(
        task("a", "click", selector={"strategy": "psychic", "value": "x"}), actions=catalog
    )
    assert fields(bad) == ["tasks[0].selector.strategy"]
    good = checked(
        task("a", "click", selector={"strategy": "css", "value": "#ok"}), actions=catalog
    )
    assert good.todos is not None
    assert good.todos[0].selector is not None


def test_with_agents_connected_only_their_actions_are_plannable() -> None:
    catalog = ActionCatalog.build([(["echo"], [])])
    assert fields(checked(task("a", "wait", {"seconds": 1}), actions=catalog)) == [
        "tasks[0].action"
    ]
    # A custom action an agent advertises has no shipped schema: any object params pass.
    custom = ActionCatalog.build([(["erp.post"], ["app:erp"])])
    assert checked(task("a", "erp.post", {"any": [1, 2]}), actions=custom).todos is not None


def test_policy_refusals_are_problems_of_the_task() -> None:
    policy = parse_policy("actions: {deny: [wait]}\n", source="t.yaml")
    result = checked(task("a", "echo"), task("b", "wait", {"seconds": 1}), policy=policy)
    assert fields(result) == ["tasks[1].action"]
    assert "actions.deny" in result.problems[0].message


def test_too_many_tasks_and_an_empty_plan_are_refused() -> None:
    assert fields(checked(*(task(f"t{i}", "noop") for i in range(3)), max_tasks=2)) == ["tasks"]
    assert fields(checked()) == ["tasks"]


@pytest.mark.parametrize(
    ("params_json", "why"),
    [
        ("[" * 10_000 + "]" * 10_000, "nested deeper"),
        ('{"a":' * (MAX_PARAMS_DEPTH + 1) + "1" + "}" * (MAX_PARAMS_DEPTH + 1), "nested deeper"),
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_hostile_params_are_problems_not_crashes(params_json: str, why: str) -> None:
    plan = TaskPlan.model_validate(
        {"tasks": [{"id": "a", "action": "echo", "params_json": params_json[:16384]}]}
    )
    result = check(plan, actions=SHIPPED, max_tasks=5)
    assert result.todos is None
    assert why in result.problems[0].message


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    deep_text = json.dumps({"text": "[" * 100})
    assert checked(task("a", "echo", json.loads(deep_text))).todos is not None


def test_forged_ids_and_actions_are_refused_by_the_todo_rules() -> None:
    result = checked(task("../../etc", "echo"), task("b", "Echo; rm -rf"))
    assert fields(result) == ["tasks[0].id", "tasks[1].action"]


_IDS = st.sampled_from(["a", "b", "c", "", "../x", "-" * 63, "d.e-f"])
_ACTIONS = st.sampled_from(["echo", "wait", "noop", "click", "fail", "", "Teleport", "X" * 63])
_JSON_TEXT = st.one_of(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    ).map(json.dumps),
    st.text(alphabet='[]{}"\\:,1a ', max_size=200),
)
_TASKS = st.fixed_dictionaries(
    {
        "id": _IDS,
        "action": _ACTIONS,
        "params_json": _JSON_TEXT,
        "depends_on": st.lists(_IDS, max_size=3),
        "selector": st.none()
        | st.fixed_dictionaries(
            {"strategy": st.sampled_from(["css", "psychic", ""]), "value": st.text(max_size=5)}
        ),
        "inputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["x", "1bad", ""]), "task_id": _IDS, "output_key": _IDS}
            ),
            max_size=2,
        ),
    }
)


@settings(max_examples=300, deadline=None)
@given(tasks=st.lists(_TASKS, max_size=6))
def test_any_proposal_is_accepted_or_refused_with_problems_never_a_crash(
    tasks: list[dict[str, Any]],
) -> None:
    result = check(
        TaskPlan.model_validate({"tasks": tasks}),
        actions=SHIPPED,
        max_tasks=5,
        policy=parse_policy("actions: {deny: [fail]}\n", source="t.yaml"),
    )
    if result.todos is None:
        assert 0 < len(result.problems) <= result.total
        assert all(p.field.startswith("tasks") for p in result.problems)
    else:
        assert result.problems == ()
        assert all(todo.action != "fail" for todo in result.todos)
