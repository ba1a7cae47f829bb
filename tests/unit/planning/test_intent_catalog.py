"""Loading intent catalogs: what a good catalog becomes, and file:line errors for broken ones."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cpa_scheduler.domain.errors import InvalidArgument, Reason
from cpa_scheduler.domain.retry import RetryPolicy
from cpa_scheduler.domain.todo import OutputRef, SelectorStrategy
from cpa_scheduler.planning import (
    CatalogError,
    IntentCatalog,
    load_catalog,
    load_default_catalog,
    parse_catalog,
)


def write_catalog(tmp_path: Path, text: str) -> Path:
    """Write `text` (dedented; its first line is line 1 of the file) as tmp_path/intents.yaml."""
    path = tmp_path / "intents.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> tuple[CatalogError, Path]:
    path = write_catalog(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    return caught.value, path


def test_default_catalog_loads_in_file_order() -> None:
    catalog = load_default_catalog()

    assert catalog.names == (
        "forward_invoice",
        "portal_download_and_mail",
        "send_mail",
        "search_document",
    )
    assert catalog.source.endswith("intents.yaml")


def test_loaded_intent_keeps_patterns_parameters_and_tasks(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        r"""
        intents:
          - name: pay_invoice
            description: Pay an invoice in the bank portal.
            patterns:
              - regex: 'pay invoice (?P<number>\d+)'
              - keywords: [pay, invoice]
            parameters:
              number: {required: true, description: Invoice number}
              bank: {default: main}
              note:
            tasks:
              - id: open
                action: playwright
                params: {url: "https://bank.example/{{ bank }}"}
              - id: pay
                action: click
                depends_on: [open]
                selector: {strategy: role, value: "button"}
                timeout_s: 30
                schedule_to_start_timeout_s: 120
                required_capabilities: [playwright]
                required_labels: {site: hq}
                requires_approval: true
                retry_policy:
                  max_attempts: 5
                  initial_backoff_s: 0.5
                  multiplier: 3
                  max_backoff_s: 20
                  jitter: 0
                  non_retryable_codes: [DECLINED]
        """,
    )

    catalog = load_catalog(path)

    assert isinstance(catalog, IntentCatalog)
    assert catalog.source == str(path)
    intent = catalog.get("pay_invoice")
    assert intent is not None
    assert intent.line == 2
    assert [(p.kind, p.source, p.line) for p in intent.patterns] == [
        ("regex", r"pay invoice (?P<number>\d+)", 5),
        ("keywords", "pay, invoice", 6),
    ]
    number, bank, note = intent.parameters
    assert (number.name, number.required, number.has_default) == ("number", True, False)
    assert (bank.name, bank.required, bank.has_default, bank.default) == (
        "bank",
        False,
        True,
        "main",
    )
    assert (note.name, note.required, note.has_default) == ("note", False, False)
    pay = intent.tasks[1]
    assert pay.depends_on == ("open",)
    assert pay.selector_strategy is SelectorStrategy.ROLE
    assert pay.timeout_s == 30
    assert pay.schedule_to_start_s == 120
    assert pay.required_capabilities == frozenset({"playwright"})
    assert pay.required_labels == {"site": "hq"}
    assert pay.requires_approval is True
    assert pay.retry_policy == RetryPolicy(
        max_attempts=5,
        initial_backoff_s=0.5,
        multiplier=3,
        max_backoff_s=20,
        jitter=0,
        non_retryable_codes=frozenset({"DECLINED"}),
    )
    assert catalog.get("no_such_intent") is None


def test_intent_without_patterns_is_allowed(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        """
        intents:
          - name: nightly_cleanup
            description: Only ever started by name.
            tasks:
              - {id: clean, action: noop}
        """,
    )

    assert load_catalog(path).intents[0].patterns == ()


def test_parse_catalog_names_the_source_in_errors() -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog("intents: [\n", source="inline.yaml")

    assert str(caught.value).startswith("inline.yaml:2: YAML syntax error")


def test_catalog_error_is_an_invalid_argument(tmp_path: Path) -> None:
    error, _ = load_error(tmp_path, "intents: []\n")

    assert isinstance(error, InvalidArgument)
    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 1
    assert error.field == "intents"


# --- YAML and schema problems ---------------------------------------------------------------------


def test_yaml_syntax_error_reports_file_and_line(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks: [
              {id: a, action: send_mail}
            patterns: []
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 6
    assert str(error).startswith(f"{path}:6: YAML syntax error: ")


def test_tab_indentation_reports_its_line(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "intents:\n  - name: a\n\t description: x\n")

    assert error.line == 3
    assert str(error).startswith(f"{path}:3: YAML syntax error")


def test_unknown_field_reports_line_and_field(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: send_mail
                colour: blue
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 7
    assert error.field == "intents[0].tasks[0].colour"
    assert str(error) == (
        f"{path}:7: intent 'send_mail' task 'compose' field 'colour': unknown field"
    )


def test_missing_name_reports_the_intents_line(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: first
            description: Fine.
            tasks: [{id: a, action: noop}]
          - description: No name.
            tasks: [{id: a, action: noop}]
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 5
    assert error.field == "intents[1].name"
    assert str(error) == f"{path}:5: intents[1] field 'name': missing required field"


def test_wrong_type_reports_the_fields_line(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: send_mail
                timeout_s: soon
        """,
    )

    assert error.line == 7
    assert str(error).startswith(
        f"{path}:7: intent 'send_mail' task 'compose' field 'timeout_s': Input should be"
    )


def test_pattern_needs_exactly_one_kind(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            patterns:
              - regex: 'send'
              - regex: 'mail'
                keywords: [mail]
            tasks: [{id: a, action: send_mail}]
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 6
    assert str(error) == (
        f"{path}:6: intent 'send_mail' field 'patterns[1]': "
        "a pattern needs exactly one of 'regex' or 'keywords'"
    )


def test_intent_name_must_be_lower_snake_case(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: SendMail
            description: Send a mail.
            tasks: [{id: a, action: send_mail}]
        """,
    )

    assert error.line == 2
    assert str(error).startswith(f"{path}:2: intent 'SendMail' field 'name': String should match")


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            description: Twice.
            tasks: [{id: a, action: send_mail}]
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 4
    assert str(error) == f"{path}:4: duplicate key 'description' (first on line 3)"


def test_duplicate_intent_name_is_refused(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks: [{id: a, action: send_mail}]
          - name: send_mail
            description: Again.
            tasks: [{id: a, action: send_mail}]
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 5
    assert str(error) == (
        f"{path}:5: intent 'send_mail' field 'name': "
        "duplicate intent name 'send_mail' (first on line 2)"
    )


def test_an_intent_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    error, _ = load_error(
        tmp_path,
        """
        intents:
          - name: "send_mail\\n"
            description: Send a mail.
            tasks: [{id: a, action: noop}]
        """,
    )

    assert error.line == 2
    assert "field 'name'" in str(error)


def test_unknown_is_a_reserved_intent_name(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: unknown
            description: Catch-all.
            tasks: [{id: a, action: noop}]
        """,
    )

    assert error.line == 2
    assert str(error).startswith(f"{path}:2: intent 'unknown' field 'name': 'unknown' is reserved")


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ("context: {}", "parameter name 'context' must be lower snake case and not 'context'"),
        ("Recipient: {}", "parameter name 'Recipient' must be lower snake case"),
        ('"to\\n": {}', "parameter name 'to\\n' must be lower snake case"),
        ("to: {required: true, default: x}", "a required parameter cannot have a default"),
    ],
)
def test_bad_parameter_declarations(tmp_path: Path, parameters: str, problem: str) -> None:
    error, path = load_error(
        tmp_path,
        f"""
        intents:
          - name: send_mail
            description: Send a mail.
            parameters:
              {parameters}
            tasks: [{{id: a, action: send_mail}}]
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 5
    assert problem in str(error)
    assert str(error).startswith(f"{path}:5: intent 'send_mail' field 'parameters.")


def test_params_refuse_values_that_are_not_plain_data(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: pay
            description: Pay.
            tasks:
              - id: pay
                action: noop
                params:
                  due: 2024-05-01
        """,
    )

    assert error.line == 8
    assert error.field == "intents[0].tasks[0].params.due"
    assert str(error).startswith(
        f"{path}:8: intent 'pay' task 'pay' field 'params.due': value of type date is not allowed"
    )


def test_empty_file_is_refused(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "# nothing here\n")

    assert error.line == 1
    assert str(error) == (
        f"{path}:1: the catalog is empty; expected a mapping with an 'intents' list"
    )


def test_file_that_is_not_utf8_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "intents.yaml"
    path.write_bytes(b"intents:\n  - name: caf\xe9\n")

    with pytest.raises(CatalogError) as caught:
        load_catalog(path)

    assert caught.value.line == 2
    assert str(caught.value).startswith(f"{path}:2: not UTF-8")


def test_a_control_character_reports_the_line(tmp_path: Path) -> None:
    # PyYAML's reader refuses it while the loader is made, before any parsing starts.
    path = tmp_path / "intents.yaml"
    path.write_text("intents:\n  - name: a\x1fb\n")

    with pytest.raises(CatalogError) as caught:
        load_catalog(path)

    assert caught.value.line == 2
    assert "character '\\x1f' is not allowed" in str(caught.value)


# --- Patterns -------------------------------------------------------------------------------------


def test_bad_regex_reports_its_line(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            patterns:
              - regex: 'send (mail'
            tasks: [{id: a, action: send_mail}]
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 5
    assert error.field == "intents[0].patterns[0].regex"
    assert str(error) == (
        f"{path}:5: intent 'send_mail' field 'patterns[0].regex': "
        "invalid regex: missing ), unterminated subpattern at position 5"
    )


def test_regex_group_must_be_a_declared_parameter(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            patterns:
              - regex: 'mail (?P<recipient>\\S+)'
              - regex: 'mail (?P<recipient>\\S+) about (?P<subject>.+)'
            parameters:
              recipient: {required: true}
            tasks: [{id: a, action: send_mail}]
        """,
    )

    assert error.line == 6
    assert str(error).startswith(
        f"{path}:6: intent 'send_mail' field 'patterns[1].regex': "
        "regex group 'subject' is not a declared parameter"
    )


def test_empty_keyword_is_refused(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: export_pdf
            description: Export.
            patterns:
              - keywords:
                  - export
                  - "  "
            tasks: [{id: a, action: noop}]
        """,
    )

    assert error.line == 7
    assert (
        str(error)
        == f"{path}:7: intent 'export_pdf' field 'patterns[0].keywords[1]': keyword is empty"
    )


# --- Templates ------------------------------------------------------------------------------------


def test_template_syntax_error_names_intent_task_field_and_line(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            patterns:
              - regex: 'mail (?P<recipient>\\S+)'
            parameters:
              recipient: {required: true}
            tasks:
              - id: compose
                action: send_mail
                params:
                  to: "{{ recipient }}"
                text: "Hello {{ recipient }"
        """,
    )

    assert error.reason is Reason.TEMPLATE_ERROR
    assert error.line == 13
    assert error.field == "intents[0].tasks[0].text"
    assert (
        str(error) == f"{path}:13: intent 'send_mail' task 'compose' field 'text': unexpected '}}'"
    )


def test_template_syntax_error_in_a_literal_block_reports_the_template_line(
    tmp_path: Path,
) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: send_mail
                params:
                  body: |
                    Hello,

                    {{ context.user }
                    regards
        """,
    )

    assert error.reason is Reason.TEMPLATE_ERROR
    assert error.line == 11
    assert str(error) == (
        f"{path}:11: intent 'send_mail' task 'compose' field 'params.body': unexpected '}}'"
    )


def test_unknown_filter_is_a_template_error_at_load(tmp_path: Path) -> None:
    error, _ = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: send_mail
                description: "{{ context.user | shout }}"
        """,
    )

    assert error.reason is Reason.TEMPLATE_ERROR
    assert error.line == 7
    assert "No filter named 'shout'" in str(error)


def test_undeclared_template_variable_is_refused_at_load(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            parameters:
              recipient: {required: true}
            tasks:
              - id: compose
                action: send_mail
                selector: {strategy: css, value: "#to-{{ recipent }}"}
        """,
    )

    assert error.reason is Reason.TEMPLATE_ERROR
    assert error.line == 9
    assert error.field == "intents[0].tasks[0].selector.value"
    assert str(error) == (
        f"{path}:9: intent 'send_mail' task 'compose' field 'selector.value': "
        "undefined variable 'recipent' (declared parameters: recipient; "
        "the request context is 'context')"
    )


@pytest.mark.parametrize(
    ("template", "attribute"),
    [
        ("{{ ''.__class__.__mro__ }}", "__mro__"),
        ("{{ context.__class__ }}", "__class__"),
        ("{{ ''|attr('__globals__') }}", "__globals__"),
    ],
)
def test_private_attribute_access_is_a_template_error_at_load(
    tmp_path: Path, template: str, attribute: str
) -> None:
    error, path = load_error(
        tmp_path,
        f"""
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: send_mail
                params:
                  nested:
                    - {{probe: "{template}"}}
        """,
    )

    assert error.reason is Reason.TEMPLATE_ERROR
    assert error.line == 9
    assert error.field == "intents[0].tasks[0].params.nested[0].probe"
    assert f"access to attribute {attribute!r} is not allowed in templates" in str(error)
    assert str(error).startswith(f"{path}:9: intent 'send_mail' task 'compose'")


# --- Task rules -----------------------------------------------------------------------------------


def test_duplicate_task_id(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - {id: compose, action: noop}
              - {id: compose, action: send_mail}
        """,
    )

    assert error.reason is Reason.DUPLICATE_TASK_ID
    assert error.line == 6
    assert str(error) == (
        f"{path}:6: intent 'send_mail' task 'compose' field 'id': "
        "task id 'compose' is used by both todos[0] and todos[1]"
    )


def test_unknown_dependency(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: noop
              - id: send
                action: send_mail
                depends_on:
                  - compose
                  - compsoe
        """,
    )

    assert error.reason is Reason.UNKNOWN_DEPENDENCY
    assert error.line == 11
    assert error.field == "intents[0].tasks[1].depends_on[1]"
    assert str(error) == (
        f"{path}:11: intent 'send_mail' task 'send' field 'depends_on[1]': "
        "task 'send' depends on unknown task 'compsoe'"
    )


def test_dependency_cycle(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: loop
            description: Never ends.
            tasks:
              - {id: a, action: noop, depends_on: [c]}
              - {id: b, action: noop, depends_on: [a]}
              - {id: c, action: noop, depends_on: [b]}
        """,
    )

    assert error.reason is Reason.GRAPH_CYCLE
    assert error.line == 6
    assert error.field == "intents[0].tasks[1].depends_on[0]"
    assert str(error) == (
        f"{path}:6: intent 'loop' task 'b' field 'depends_on[0]': "
        "dependency cycle: a -> c -> b -> a"
    )


def test_domain_rules_apply_to_static_task_fields(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: send_mail
                timeout_s: 0
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 7
    assert error.field == "intents[0].tasks[0].timeout_s"
    assert str(error).startswith(
        f"{path}:7: intent 'send_mail' task 'compose' field 'timeout_s': "
        "task 'compose': timeout must be positive"
    )


def test_a_schedule_to_start_timeout_is_checked_under_its_yaml_name(tmp_path: Path) -> None:
    error, _ = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: send_mail
                schedule_to_start_timeout_s: -5
        """,
    )

    assert error.line == 7
    assert error.field == "intents[0].tasks[0].schedule_to_start_timeout_s"
    assert "schedule-to-start timeout must be positive" in str(error)


def test_bad_custom_action_keeps_the_domain_reason(tmp_path: Path) -> None:
    error, _ = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: Send Mail
        """,
    )

    assert error.reason is Reason.UNKNOWN_ACTION
    assert error.line == 6
    assert error.field == "intents[0].tasks[0].action"


def test_bad_retry_policy_points_at_the_field(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: send_mail
            description: Send a mail.
            tasks:
              - id: compose
                action: send_mail
                retry_policy:
                  max_attempts: 3
                  initial_backoff_s: 10
                  max_backoff_s: 5
        """,
    )

    assert error.reason is Reason.INVALID_RETRY_POLICY
    assert error.line == 10
    assert error.field == "intents[0].tasks[0].retry_policy.max_backoff_s"
    assert str(error).startswith(
        f"{path}:10: intent 'send_mail' task 'compose' field 'retry_policy.max_backoff_s': "
        "max_backoff must be between"
    )


# --- Inputs ---------------------------------------------------------------------------------------


def test_task_inputs_are_loaded_and_rendered(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        """
        intents:
          - name: pay_invoice
            description: Pay an invoice.
            tasks:
              - {id: read, action: playwright}
              - {id: check, action: noop, depends_on: [read]}
              - id: pay
                action: click
                depends_on: [check]
                inputs:
                  amount: {task_id: read, output_key: total}
                  approved: {task_id: check, output_key: ok}
        """,
    )

    intent = load_catalog(path).intents[0]
    pay = intent.render({}, context={})[2]

    assert pay.inputs == {
        "amount": OutputRef(task_id="read", output_key="total"),
        "approved": OutputRef(task_id="check", output_key="ok"),
    }
    assert intent.render({}, context={})[0].inputs == {}


def test_input_from_a_task_that_is_not_upstream_is_refused_at_load(tmp_path: Path) -> None:
    error, path = load_error(
        tmp_path,
        """
        intents:
          - name: pay_invoice
            description: Pay an invoice.
            tasks:
              - {id: read, action: playwright}
              - id: pay
                action: click
                inputs:
                  amount:
                    task_id: read
                    output_key: total
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 10
    assert error.field == "intents[0].tasks[1].inputs.amount.task_id"
    assert str(error).startswith(
        f"{path}:10: intent 'pay_invoice' task 'pay' field 'inputs.amount.task_id': "
        "task 'pay': input 'amount' takes an output of task 'read', which is not upstream of it"
    )


def test_artifact_input_is_loaded(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        """
        intents:
          - name: mail_pdf
            description: Mail a PDF.
            tasks:
              - {id: download, action: playwright}
              - id: send
                action: send_mail
                depends_on: [download]
                inputs:
                  pdf: {task_id: download, artifact_name: invoice.pdf}
        """,
    )
    intent = load_catalog(path).get("mail_pdf")
    assert intent is not None
    assert intent.tasks[1].inputs == {
        "pdf": OutputRef(task_id="download", artifact_name="invoice.pdf")
    }


def test_artifact_input_with_a_bad_name_is_refused_at_load(tmp_path: Path) -> None:
    error, _ = load_error(
        tmp_path,
        """
        intents:
          - name: mail_pdf
            description: Mail a PDF.
            tasks:
              - {id: download, action: playwright}
              - id: send
                action: send_mail
                depends_on: [download]
                inputs:
                  pdf: {task_id: download, artifact_name: a/b.pdf}
        """,
    )
    assert error.reason is Reason.INVALID_FIELD
    assert error.field.endswith("inputs.pdf.artifact_name")
    assert "artifact name 'a/b.pdf' must be" in str(error)


@pytest.mark.parametrize(
    ("inputs", "reason", "field"),
    [
        ("{2nd: {task_id: read, output_key: x}}", Reason.INVALID_FIELD, "inputs.2nd"),
        # The user's own input name is kept, never taken for the task's `timeout` field.
        ("{timeout: {task_id: read}}", Reason.MISSING_FIELD, "inputs.timeout.output_key"),
        ("{amount: {task_id: '', output_key: x}}", Reason.MISSING_FIELD, "inputs.amount.task_id"),
        (
            "{amount: {task_id: ghost, output_key: x}}",
            Reason.UNKNOWN_DEPENDENCY,
            "inputs.amount.task_id",
        ),
    ],
    ids=["bad name", "no output_key", "no task_id", "unknown task"],
)
def test_bad_input_is_refused_at_load_naming_its_field(
    tmp_path: Path, inputs: str, reason: Reason, field: str
) -> None:
    error, _ = load_error(
        tmp_path,
        f"""
        intents:
          - name: pay_invoice
            description: Pay an invoice.
            tasks:
              - {{id: read, action: playwright}}
              - {{id: pay, action: click, depends_on: [read], inputs: {inputs}}}
        """,
    )

    assert error.reason is reason
    assert error.line == 6
    assert error.field == f"intents[0].tasks[1].{field}"


def test_credential_refs_are_templates_rendered_per_request(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        """
        intents:
          - name: portal_login
            description: Log into a portal.
            parameters:
              portal: {default: contoso}
            tasks:
              - id: login
                action: playwright
                credential_refs:
                  portal: "env:{{ portal | upper }}_PASSWORD"
                  mailbox: mail.token
        """,
    )

    intent = load_catalog(path).intents[0]

    assert intent.render({"portal": "fabrikam"}, context={})[0].credential_refs == {
        "portal": "env:FABRIKAM_PASSWORD",
        "mailbox": "mail.token",
    }


def test_a_bad_credential_purpose_is_refused_at_load(tmp_path: Path) -> None:
    error, _ = load_error(
        tmp_path,
        """
        intents:
          - name: portal_login
            description: Log into a portal.
            tasks:
              - id: login
                action: playwright
                credential_refs: {"the portal": "env:P"}
        """,
    )

    assert error.reason is Reason.INVALID_FIELD
    assert error.line == 7
    assert error.field == "intents[0].tasks[0].credential_refs.the portal"


def test_a_credential_reference_that_renders_empty_is_a_template_error(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        """
        intents:
          - name: portal_login
            description: Log into a portal.
            parameters:
              ref: {default: ""}
            tasks:
              - {id: login, action: playwright, credential_refs: {portal: "{{ ref }}"}}
        """,
    )

    with pytest.raises(InvalidArgument) as caught:
        load_catalog(path).intents[0].render({"ref": ""}, context={})

    assert caught.value.reason is Reason.TEMPLATE_ERROR
    assert "credential 'portal' names no reference" in caught.value.message


def test_a_task_session_is_loaded_and_rendered_and_a_bad_one_is_refused_at_load(
    tmp_path: Path,
) -> None:
    path = write_catalog(
        tmp_path,
        """
        intents:
          - name: two_portals
            description: Two logins.
            tasks:
              - {id: a, action: playwright, session: portal-a}
              - {id: b, action: playwright, depends_on: [a]}
        """,
    )
    todos = load_catalog(path).intents[0].render({}, context={})
    # The catalog keeps what it says; the planner adds the default session ("browser") to b.
    assert [todo.session for todo in todos] == ["portal-a", ""]

    error, _ = load_error(
        tmp_path,
        """
        intents:
          - name: bad_session
            description: A session outside the id alphabet.
            tasks:
              - {id: a, action: playwright, session: "no spaces"}
        """,
    )
    assert "session" in str(error)
