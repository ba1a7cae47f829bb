"""`--todos FILE.yaml`: every ToDo field converts; every malformed file names file, line, field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2, struct_pb2

from cpa.common.v1 import todo_pb2
from cpa_cli.main import main
from cpa_cli.todos_file import TodosFileError, load_todos, parse_todos

FULL = """\
- id: open_portal
  action: playwright
  description: Open the supplier portal
  credential_refs: {portal: "env:PORTAL_PASSWORD"}
  params:
    step: goto
    url: https://portal.example.com
    retries: [1, 2.5, null, true]
  timeout_s: 60
- id: download
  action: click
  depends_on: [open_portal]
  selector: {strategy: text, value: invoice 42}
  text: ignored by click
  required_capabilities: [browser]
  required_labels: {site: berlin}
  schedule_to_start_timeout_s: 0.25
  requires_approval: true
  retry_policy:
    max_attempts: 3
    initial_backoff_s: 2
    multiplier: 2
    max_backoff_s: 30
    jitter: 0.2
    non_retryable_codes: [PERMISSION_DENIED]
- id: file_it
  action: archive.store
  depends_on: download
  inputs:
    invoice: {task_id: download, output_key: path}
"""


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def test_every_field_converts_to_the_todo_message() -> None:
    todos = parse_todos(FULL, source="full.yaml")

    assert todos == [
        todo_pb2.ToDo(
            id="open_portal",
            action=todo_pb2.ACTION_TYPE_PLAYWRIGHT,
            description="Open the supplier portal",
            credential_refs={"portal": "env:PORTAL_PASSWORD"},
            params=_struct(
                {
                    "step": "goto",
                    "url": "https://portal.example.com",
                    "retries": [1, 2.5, None, True],
                }
            ),
            timeout=duration_pb2.Duration(seconds=60),
        ),
        todo_pb2.ToDo(
            id="download",
            action=todo_pb2.ACTION_TYPE_CLICK,
            depends_on=["open_portal"],
            selector=todo_pb2.Selector(
                strategy=todo_pb2.SELECTOR_STRATEGY_TEXT, value="invoice 42"
            ),
            text="ignored by click",
            required_capabilities=["browser"],
            required_labels={"site": "berlin"},
            schedule_to_start_timeout=duration_pb2.Duration(nanos=250_000_000),
            requires_approval=True,
            retry_policy=todo_pb2.RetryPolicy(
                max_attempts=3,
                initial_backoff=duration_pb2.Duration(seconds=2),
                backoff_multiplier=2,
                max_backoff=duration_pb2.Duration(seconds=30),
                jitter=0.2,
                non_retryable_codes=["PERMISSION_DENIED"],
            ),
        ),
        # A name that is no built-in action type is a custom action; one id may stand for a list.
        todo_pb2.ToDo(
            id="file_it",
            action=todo_pb2.ACTION_TYPE_CUSTOM,
            custom_action="archive.store",
            depends_on=["download"],
            inputs={"invoice": todo_pb2.OutputReference(task_id="download", output_key="path")},
        ),
    ]


def test_built_in_agent_actions_are_custom_actions() -> None:
    (todo,) = parse_todos("- {id: pause, action: wait, params: {seconds: 0.5}}\n")
    assert (todo.action, todo.custom_action) == (todo_pb2.ACTION_TYPE_CUSTOM, "wait")
    assert todo.params == _struct({"seconds": 0.5})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "- id: a\n  action: [echo\n",
            "bad.yaml:3: YAML syntax error: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence started on line 2)",
            id="yaml-syntax",
        ),
        pytest.param(
            "- id: a\n  action: echo\n\tparams: {}\n",
            "bad.yaml:3: YAML syntax error: found character '\\t' that cannot start any token",
            id="tab",
        ),
        pytest.param("", "bad.yaml:1: the file is empty", id="empty-file"),
        pytest.param("[]\n", "bad.yaml:1: the list holds no ToDos", id="empty-list"),
        pytest.param(
            "id: a\naction: echo\n",
            "bad.yaml:1: expected a YAML list of ToDo mappings, got a mapping",
            id="not-a-list",
        ),
        pytest.param(
            "- id: a\n  action: echo\n- just text\n",
            "bad.yaml:3: todos[1]: expected a ToDo (a mapping), got a string",
            id="item-not-a-mapping",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  dependson: [b]\n",
            "bad.yaml:3: todos[0].dependson: unknown key 'dependson' (did you mean 'depends_on'?)",
            id="misspelt-key",
        ),
        pytest.param(
            "- id: a\n  action: echo\n- id: b\n  description: no action\n",
            "bad.yaml:3: todos[1]: missing required key 'action'",
            id="missing-action",
        ),
        pytest.param(
            "- id: 7\n  action: echo\n",
            "bad.yaml:1: todos[0].id: expected a string, got a number",
            id="id-not-a-string",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  depends_on: {b: c}\n",
            "bad.yaml:3: todos[0].depends_on: expected a list of strings, got a mapping",
            id="depends-on-mapping",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  params: [1, 2]\n",
            "bad.yaml:3: todos[0].params: expected a mapping, got a list",
            id="params-not-a-mapping",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  params:\n    when: 2026-01-01\n",
            "bad.yaml:4: todos[0].params.when: expected a JSON value, got a date "
            "(quote it to pass it as text)",
            id="params-date",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  timeout_s: soon\n",
            "bad.yaml:3: todos[0].timeout_s: expected a number, got a string",
            id="timeout-text",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  timeout_s: -1\n",
            "bad.yaml:3: todos[0].timeout_s: expected a number of seconds >= 0, got -1",
            id="timeout-negative",
        ),
        pytest.param(
            "- id: a\n  action: click\n  selector: {strategy: id, value: x}\n",
            "bad.yaml:3: todos[0].selector.strategy: unknown strategy 'id' "
            "(known: css, xpath, text, role, test_id)",
            id="selector-strategy",
        ),
        pytest.param(
            "- id: a\n  action: click\n  selector: {strategy: css}\n",
            "bad.yaml:3: todos[0].selector: missing required key 'value'",
            id="selector-value",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  required_labels: {site: 1}\n",
            "bad.yaml:3: todos[0].required_labels.site: expected a string, got a number",
            id="label-value",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  retry_policy:\n    max_attempts: three\n",
            "bad.yaml:4: todos[0].retry_policy.max_attempts: expected a whole number, got a string",
            id="max-attempts",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  retry_policy:\n    backoff: 2\n",
            "bad.yaml:4: todos[0].retry_policy.backoff: unknown key 'backoff' "
            "(did you mean 'max_backoff_s'?)",
            id="retry-key",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  inputs: [x]\n",
            "bad.yaml:3: todos[0].inputs: expected a mapping of inputs, got a list",
            id="inputs-list",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  inputs:\n    x: {task: b}\n",
            "bad.yaml:4: todos[0].inputs.x.task: unknown key 'task' (did you mean 'task_id'?)",
            id="input-key",
        ),
        pytest.param(
            "- id: a\n  action: echo\n  requires_approval: yes please\n",
            "bad.yaml:3: todos[0].requires_approval: expected true or false, got a string",
            id="approval",
        ),
    ],
)
def test_a_malformed_file_names_file_line_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(TodosFileError) as raised:
        load_todos(path)

    assert str(raised.value) == message.replace("bad.yaml", str(path), 1)


def test_submit_reports_the_file_error_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("todos.yaml").write_text("- id: a\n  action: echo\n  param: {}\n", encoding="utf-8")

    # No server is contacted: the file is read before the request is sent.
    assert main(["submit", "--todos", "todos.yaml", "--server", "127.0.0.1:1"]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "cpa: todos.yaml:3: todos[0].param: unknown key 'param' (did you mean 'params'?)\n"
    )


def test_a_missing_or_undecodable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TodosFileError, match=r"missing\.yaml: cannot read the file \(No such"):
        load_todos(tmp_path / "missing.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"- id: a\n  action: echo\n  description: caf\xe9\n")
    with pytest.raises(TodosFileError, match=r"latin\.yaml:3: not UTF-8 \(invalid"):
        load_todos(latin)


def test_the_example_in_the_repository_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "invoice_todos.yaml"
    todos = load_todos(example)
    assert [t.id for t in todos] == ["fetch_invoice", "fetch_contract", "merge", "notify"]
    assert list(todos[2].depends_on) == ["fetch_invoice", "fetch_contract"]
    assert todos[3].retry_policy.max_attempts == 5


BOMB = Path(__file__).resolve().parents[1] / "fixtures" / "yaml" / "todos_alias_bomb.yaml"


def test_an_alias_bomb_is_refused_at_its_first_alias_before_it_expands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # 478 bytes that describe 9**8 strings: converting them into a Struct took minutes.
    with pytest.raises(TodosFileError) as raised:
        load_todos(BOMB)
    assert raised.value.line == 6  # `b: &b [*a, ...]`, the first alias
    assert str(raised.value).startswith(f"{BOMB}:6: alias *a is not allowed")

    monkeypatch.chdir(BOMB.parent)
    assert main(["submit", "--todos", BOMB.name, "--server", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.startswith(f"cpa: {BOMB.name}:6: alias *a is not allowed")


def test_nesting_past_the_bound_is_refused_with_its_line() -> None:
    deep = "[" * 2000 + "]" * 2000
    with pytest.raises(TodosFileError) as raised:
        parse_todos(f"- id: a\n  action: echo\n  params: {{x: {deep}}}\n", source="deep.yaml")
    assert str(raised.value).startswith("deep.yaml:3: values nested deeper than 64 levels")


def test_a_session_is_read_and_must_be_text(tmp_path: Path) -> None:
    (todo,) = parse_todos("- {id: login, action: playwright, session: portal}\n")
    assert todo.session == "portal"
    with pytest.raises(TodosFileError, match="session"):
        parse_todos("- {id: login, action: playwright, session: [a]}\n")
