"""Routing text and intent names to rendered ToDos, with the sample catalog and small ones."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cpa_scheduler.domain import OutputRef
from cpa_scheduler.domain.errors import InvalidArgument, Reason
from cpa_scheduler.domain.todo import ActionType, Selector, SelectorStrategy, ToDo
from cpa_scheduler.planning import (
    UNKNOWN_INTENT,
    Candidate,
    RouteResult,
    RuleIntentRouter,
    load_catalog,
    load_default_catalog,
    parse_catalog,
)
from cpa_scheduler.planning.intent_router import DEFAULT_MAX_TEXT_BYTES

DESKTOP_CATALOG = Path(__file__).parents[3] / "examples" / "desktop_intents.yaml"


@pytest.fixture(scope="module")
def router() -> RuleIntentRouter:
    return RuleIntentRouter(load_default_catalog())


@pytest.fixture(scope="module")
def desktop_router() -> RuleIntentRouter:
    """The desktop intents a Windows agent would run (not shipped: no agent offers them)."""
    return RuleIntentRouter(load_catalog(DESKTOP_CATALOG))


def router_for(text: str) -> RuleIntentRouter:
    return RuleIntentRouter(parse_catalog(textwrap.dedent(text), source="test.yaml"))


def by_id(todos: tuple[ToDo, ...]) -> dict[str, ToDo]:
    return {todo.id: todo for todo in todos}


# --- The sample catalog ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "intent", "parameters"),
    [
        (
            "Send a mail to bob@example.com about invoice 42",
            "send_mail",
            {"recipient": "bob@example.com", "subject": "invoice 42"},
        ),
        (
            "please email alice@example.org regarding the Q3 numbers.",
            "send_mail",
            {"recipient": "alice@example.org", "subject": "the Q3 numbers"},
        ),
        (
            "Search for document 'Q3 report'",
            "search_document",
            {"query": "Q3 report"},
        ),
        (
            "find the document titled Budget 2024",
            "search_document",
            {"query": "Budget 2024"},
        ),
        (
            "forward the November invoice from the supplier portal to accounting@example.com",
            "forward_invoice",
            {"month": "November", "recipient": "accounting@example.com"},
        ),
        (
            "Please send the invoice for 2026-11 from the portal to ap@example.org",
            "forward_invoice",
            {"month": "2026-11", "recipient": "ap@example.org"},
        ),
        (
            "mail our Nov 2026 invoice from the supplier portal to ap@example.org",
            "forward_invoice",
            {"month": "Nov 2026", "recipient": "ap@example.org"},
        ),
        (
            "Download the invoice 42 from the portal and mail it to bob@example.com",
            "portal_download_and_mail",
            {"document": "invoice 42", "recipient": "bob@example.com"},
        ),
        (
            "Fetch March statement from the portal, then send it to carol@example.com",
            "portal_download_and_mail",
            {"document": "March statement", "recipient": "carol@example.com"},
        ),
    ],
)
def test_sample_intents_route_from_several_phrasings(
    router: RuleIntentRouter, text: str, intent: str, parameters: dict[str, str]
) -> None:
    result = router.route(text)

    assert result.intent == intent
    assert result.parameters == parameters
    assert result.candidates == ()
    assert result.todos
    for index, todo in enumerate(result.todos):
        todo.validate(f"todos[{index}]")


@pytest.mark.parametrize(
    ("text", "parameters"),
    [
        ("Export the Q3 report as PDF from excel", {"document": "Q3 report", "app": "excel"}),
        ("could you do a PDF export of this?", {"document": "current document", "app": "word"}),
    ],
)
def test_desktop_example_intents_route(
    desktop_router: RuleIntentRouter, text: str, parameters: dict[str, str]
) -> None:
    result = desktop_router.route(text)

    assert (result.intent, result.parameters) == ("export_pdf", parameters)
    assert [todo.action for todo in result.todos] == ["open_app", "click", "wait_for"]


def test_send_mail_renders_recipient_subject_and_body(router: RuleIntentRouter) -> None:
    result = router.route("Send a mail to bob@example.com about invoice 42")

    (send,) = result.todos
    assert send.action == ActionType.SEND_MAIL
    assert send.params == {
        "to": "bob@example.com",
        "subject": "invoice 42",
        "body": "Hello, this message is about invoice 42.",
    }
    assert send.description == "Send a mail to bob@example.com"


def test_optional_group_falls_back_to_the_default(router: RuleIntentRouter) -> None:
    result = router.route("write a message to dana@example.com")

    assert result.parameters == {
        "recipient": "dana@example.com",
        "subject": "Message from CPA Scheduler",
    }


def test_matching_ignores_case_and_keeps_the_texts_spelling(router: RuleIntentRouter) -> None:
    result = router.route("SEARCH FOR DOCUMENT 'Q3 Report'")

    assert result.intent == "search_document"
    assert result.parameters == {"query": "Q3 Report"}
    assert by_id(result.todos)["search"].params["steps"][0]["value"] == "Q3 Report"


def test_each_pattern_of_an_intent_can_match(router: RuleIntentRouter) -> None:
    first = router.route("send an email to bob@example.com")
    second = router.route("mail bob@example.com about lunch")

    assert first.intent == second.intent == "send_mail"
    intent = router.catalog.get("send_mail")
    assert intent is not None
    assert first.matched_pattern == intent.patterns[0].description
    assert second.matched_pattern == intent.patterns[1].description
    assert first.matched_pattern.startswith("regex: ")


def test_keywords_must_all_occur_as_whole_words(desktop_router: RuleIntentRouter) -> None:
    matched = desktop_router.route("Could you do a pdf EXPORT, please")
    partial_words = desktop_router.route("the exporter made some pdfs")

    assert matched.intent == "export_pdf"
    assert matched.matched_pattern == "keywords: export, pdf"
    assert partial_words.intent == UNKNOWN_INTENT


def test_first_intent_in_catalog_order_wins(router: RuleIntentRouter) -> None:
    # send_mail's "mail ... about" would match too, but portal_download_and_mail comes first.
    result = router.route(
        "get the invoice from the portal and mail it to bob@example.com about invoice 7"
    )

    assert result.intent == "portal_download_and_mail"


def test_first_intent_wins_when_two_match() -> None:
    router = router_for(
        """
        intents:
          - name: broad
            description: Anything about reports.
            patterns: [{keywords: [report]}]
            tasks: [{id: a, action: noop}]
          - name: narrow
            description: Q3 reports.
            patterns: [{regex: 'q3 report'}]
            tasks: [{id: a, action: noop}]
        """
    )

    assert router.route("the Q3 report").intent == "broad"


def test_forward_invoice_plans_login_open_download_send(router: RuleIntentRouter) -> None:
    todos = by_id(
        router.expand(
            "forward_invoice",
            {
                "portal_url": "http://127.0.0.1:8080",
                "user": "ap@acme.example",
                "month": "Nov 2026",
                "recipient": "accounting@example.com",
            },
        )
    )

    assert list(todos) == ["login", "open_invoices", "download", "send"]
    assert todos["open_invoices"].depends_on == ("login",)
    assert todos["download"].depends_on == ("open_invoices",)
    assert todos["send"].depends_on == ("download",)
    assert {t.action for t in todos.values()} == {ActionType.PLAYWRIGHT, ActionType.SEND_MAIL}
    login = todos["login"]
    assert login.credential_refs == {"portal_password": "supplier_portal"}
    assert login.params["steps"] == [
        {"op": "goto", "url": "http://127.0.0.1:8080/login"},
        {"op": "fill", "selector": {"test_id": "login-user"}, "value": "ap@acme.example"},
        {"op": "fill", "selector": {"test_id": "login-password"}, "secret": "portal_password"},
        {"op": "click", "selector": {"test_id": "login-submit"}},
        {"op": "verify", "selector": {"test_id": "signed-in-user"}, "text": "ap@acme.example"},
    ]
    assert todos["download"].params["steps"] == [
        {
            "op": "download",
            "selector": {"test_id": "download-2026-11"},
            "artifact": "invoice.pdf",
        }
    ]
    send = todos["send"]
    assert send.params["to"] == "accounting@example.com"
    assert send.params["subject"] == "Supplier invoice 2026-11"
    assert "2026-11" in send.params["body"]
    assert send.inputs == {"invoice": OutputRef(task_id="download", artifact_name="invoice.pdf")}


def test_forward_invoice_from_text_takes_the_portal_from_the_context(
    router: RuleIntentRouter,
) -> None:
    result = router.route(
        "forward the invoice of 2026-10 from the supplier portal to accounting@example.com",
        context={"portal_url": "https://portal.supplier.example", "portal_credential": "env:PW"},
    )

    todos = by_id(result.todos)
    assert todos["login"].params["steps"][0]["url"] == "https://portal.supplier.example/login"
    assert todos["login"].credential_refs == {"portal_password": "env:PW"}
    assert todos["download"].params["steps"][0]["selector"] == {"test_id": "download-2026-10"}


def test_forward_invoice_refuses_a_month_it_cannot_read(router: RuleIntentRouter) -> None:
    with pytest.raises(InvalidArgument) as caught:
        router.expand("forward_invoice", {"month": "Brumaire", "recipient": "a@example.com"})

    assert caught.value.reason is Reason.TEMPLATE_ERROR
    assert "not a month: 'Brumaire'" in caught.value.message


def test_portal_flow_logs_in_downloads_and_mails_the_artifact(router: RuleIntentRouter) -> None:
    result = router.route(
        "download the March statement from the portal and email it to bob@example.com",
        context={"portal_url": "https://supplier.example"},
    )

    todos = by_id(result.todos)
    assert list(todos) == ["login", "download", "send"]
    assert todos["login"].params["steps"][0] == {
        "op": "goto",
        "url": "https://supplier.example/login",
    }
    assert todos["download"].depends_on == ("login",)
    assert todos["download"].params["steps"][0]["selector"] == {"text": "March statement"}
    assert todos["send"].depends_on == ("download",)
    assert todos["send"].inputs == {
        "document": OutputRef(task_id="download", artifact_name="document.pdf")
    }
    assert {todo.action for todo in todos.values()} == {"playwright", "send_mail"}
    assert todos["download"].retry_policy is not None
    assert todos["download"].retry_policy.max_attempts == 3


def test_context_defaults_apply_without_context(router: RuleIntentRouter) -> None:
    result = router.route("grab invoice 9 from portal, mail it to bob@example.com")

    login = by_id(result.todos)["login"]
    assert login.params["steps"][0]["url"] == "https://portal.example.com/login"
    assert login.credential_refs == {"portal_password": "supplier_portal"}


# --- Unknown text ---------------------------------------------------------------------------------


def test_unknown_text_is_a_result_with_ranked_candidates(router: RuleIntentRouter) -> None:
    result = router.route("mail bob the invoice")

    assert result.intent == UNKNOWN_INTENT
    assert not result.matched
    assert result.todos == ()
    assert result.parameters == {}
    assert result.matched_pattern == ""
    # "invoice" and "mail" both describe forward_invoice best.
    assert [candidate.intent for candidate in result.candidates] == [
        "forward_invoice",
        "send_mail",
        "portal_download_and_mail",
    ]
    scores = [candidate.score for candidate in result.candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < score <= 1 for score in scores)


def test_candidates_tolerate_typos(desktop_router: RuleIntentRouter) -> None:
    result = desktop_router.route("exprot the slides to pfd")

    assert result.intent == UNKNOWN_INTENT
    assert result.candidates[0].intent == "export_pdf"
    assert (
        result.candidates[0].description
        == "Export a document from a desktop application as a PDF file."
    )


def test_candidates_are_at_most_three() -> None:
    router = router_for(
        """
        intents:
          - {name: mail_a, description: x, tasks: [{id: a, action: noop}]}
          - {name: mail_b, description: x, tasks: [{id: a, action: noop}]}
          - {name: mail_c, description: x, tasks: [{id: a, action: noop}]}
          - {name: mail_d, description: x, tasks: [{id: a, action: noop}]}
        """
    )

    result = router.route("mail")

    # Equal scores keep catalog order.
    assert [candidate.intent for candidate in result.candidates] == ["mail_a", "mail_b", "mail_c"]


def test_text_with_nothing_in_common_has_no_candidates(router: RuleIntentRouter) -> None:
    assert router.route("what is the weather like").candidates == ()
    assert router.route("").intent == UNKNOWN_INTENT


def test_overlong_text_is_refused(router: RuleIntentRouter) -> None:
    with pytest.raises(InvalidArgument) as caught:
        router.route("x" * (DEFAULT_MAX_TEXT_BYTES + 1))

    assert caught.value.reason is Reason.TEXT_TOO_LONG
    assert caught.value.field == "text"
    assert f"longer than {DEFAULT_MAX_TEXT_BYTES} bytes" in caught.value.message


def test_the_text_cap_counts_utf8_bytes_and_is_a_setting() -> None:
    small = RuleIntentRouter(load_default_catalog(), max_text_bytes=10)
    assert small.route("x" * 10).intent == UNKNOWN_INTENT
    # Five characters, ten bytes: at the cap. One more two-byte character is over it.
    assert small.route("é" * 5).intent == UNKNOWN_INTENT
    with pytest.raises(InvalidArgument) as caught:
        small.route("é" * 6)

    assert caught.value.reason is Reason.TEXT_TOO_LONG
    assert caught.value.field == "text"


def test_results_are_frozen(router: RuleIntentRouter) -> None:
    result = router.route("mail bob the invoice")

    with pytest.raises(dataclasses.FrozenInstanceError):
        result.intent = "send_mail"  # type: ignore[misc]
    assert isinstance(result, RouteResult)
    assert isinstance(result.candidates[0], Candidate)


# --- Expanding an intent by name ------------------------------------------------------------------


def test_expand_by_name_renders_parameters_and_context(router: RuleIntentRouter) -> None:
    todos = router.expand(
        "send_mail",
        {"recipient": "erin@example.com", "subject": "Payroll"},
        context={"mail_body": "See attachment."},
    )

    (send,) = todos
    assert send.params["to"] == "erin@example.com"
    assert send.params["subject"] == "Payroll"
    assert send.params["body"] == "See attachment."


def test_expand_applies_defaults_and_ignores_none(desktop_router: RuleIntentRouter) -> None:
    todos = by_id(desktop_router.expand("export_pdf", {"document": "Budget", "app": None}))

    assert todos["open_app"].params == {"app": "word", "document": "Budget"}
    assert todos["wait_file"].timeout_s == 120


def test_expand_without_a_required_parameter(router: RuleIntentRouter) -> None:
    with pytest.raises(InvalidArgument) as caught:
        router.expand("send_mail", {"subject": "Hi"})

    assert caught.value.reason is Reason.MISSING_FIELD
    assert caught.value.field == "intent.parameters.recipient"
    assert "intent 'send_mail' needs parameter 'recipient'" in caught.value.message


def test_expand_with_an_undeclared_parameter(router: RuleIntentRouter) -> None:
    with pytest.raises(InvalidArgument) as caught:
        router.expand("send_mail", {"recipient": "a@example.com", "cc": "b@example.com"})

    assert caught.value.reason is Reason.INVALID_FIELD
    assert caught.value.field == "intent.parameters.cc"
    assert "declared: recipient, subject" in caught.value.message


def test_expand_unknown_intent_lists_the_closest_names(router: RuleIntentRouter) -> None:
    with pytest.raises(InvalidArgument) as caught:
        router.expand("send_mial", {})

    assert caught.value.reason is Reason.UNKNOWN_INTENT
    assert caught.value.field == "intent.name"
    assert caught.value.message.startswith("unknown intent 'send_mial'; closest: send_mail, ")


def test_text_that_matches_but_lacks_a_required_parameter() -> None:
    router = router_for(
        """
        intents:
          - name: search_document
            description: Search.
            patterns: [{keywords: [search, document]}]
            parameters: {query: {required: true}}
            tasks: [{id: a, action: noop, text: "{{ query }}"}]
        """
    )

    with pytest.raises(InvalidArgument) as caught:
        router.route("search a document")

    assert caught.value.reason is Reason.MISSING_FIELD
    assert caught.value.field == "intent.parameters.query"


# --- Rendering ------------------------------------------------------------------------------------

RENDER_CATALOG = """
intents:
  - name: file_claim
    description: File an expense claim.
    patterns:
      - regex: 'claim (?P<amount>\\d+) for (?P<reason>.+)'
    parameters:
      amount: {required: true}
      reason: {required: true}
      note: {}
    tasks:
      - id: fill
        action: type
        selector: {strategy: css, value: "#{{ context.form_id }}"}
        text: "{{ amount }} EUR: {{ reason | upper }}"
        params:
          currency: EUR
          copies: 2
          ratio: 0.5
          urgent: false
          empty: null
          lines:
            - "{{ reason }}"
            - {tenant: "{{ context.tenant }}", count: 3}
      - id: annotate
        action: noop
        depends_on: [fill]
        text: "{{ note | default('no note') }}"
"""


def test_templates_see_groups_and_context_and_literals_keep_their_type() -> None:
    router = router_for(RENDER_CATALOG)

    result = router.route(
        "please CLAIM 120 for the taxi home", context={"form_id": "claim-form", "tenant": "acme"}
    )

    fill, annotate = result.todos
    assert result.parameters == {"amount": "120", "reason": "the taxi home"}
    assert fill.selector == Selector(strategy=SelectorStrategy.CSS, value="#claim-form")
    assert fill.text == "120 EUR: THE TAXI HOME"
    params: dict[str, Any] = dict(fill.params)
    assert params == {
        "currency": "EUR",
        "copies": 2,
        "ratio": 0.5,
        "urgent": False,
        "empty": None,
        "lines": ["the taxi home", {"tenant": "acme", "count": 3}],
    }
    assert annotate.text == "no note"


def test_missing_context_key_is_a_template_error() -> None:
    router = router_for(RENDER_CATALOG)

    with pytest.raises(InvalidArgument) as caught:
        router.route("claim 5 for coffee", context={"form_id": "f"})

    assert caught.value.reason is Reason.TEMPLATE_ERROR
    assert caught.value.message == (
        "intent 'file_claim' task 'fill' field 'params.lines[1].tenant': "
        "'dict object' has no attribute 'tenant'"
    )


def test_unbound_optional_parameter_is_a_template_error() -> None:
    router = router_for(
        """
        intents:
          - name: greet
            description: Greet.
            parameters: {name: {}}
            tasks: [{id: a, action: noop, description: "Hello {{ name }}"}]
        """
    )

    with pytest.raises(InvalidArgument) as caught:
        router.expand("greet", {})

    assert caught.value.reason is Reason.TEMPLATE_ERROR
    assert (
        caught.value.message == "intent 'greet' task 'a' field 'description': 'name' is undefined"
    )
    assert router.expand("greet", {"name": "Ann"})[0].description == "Hello Ann"


def test_sandbox_refusal_at_render_is_a_template_error() -> None:
    # Mutating a list is not visible to the load-time check; the immutable sandbox stops it.
    router = router_for(
        """
        intents:
          - name: sneaky
            description: Tries to mutate.
            tasks:
              - id: a
                action: noop
                text: "{% set items = [] %}{{ items.append(1) }}"
        """
    )

    with pytest.raises(InvalidArgument) as caught:
        router.expand("sneaky", {})

    assert caught.value.reason is Reason.TEMPLATE_ERROR
    assert caught.value.message == (
        "intent 'sneaky' task 'a' field 'text': "
        "access to attribute 'append' of 'list' object is unsafe."
    )


def test_rendered_todo_that_fails_validation_is_a_template_error() -> None:
    router = router_for(
        """
        intents:
          - name: click_it
            description: Click.
            parameters: {label: {default: ""}}
            tasks:
              - id: a
                action: click
                selector: {strategy: text, value: "{{ label }}"}
        """
    )

    with pytest.raises(InvalidArgument) as caught:
        router.expand("click_it", {})

    assert caught.value.reason is Reason.TEMPLATE_ERROR
    assert caught.value.message == (
        "intent 'click_it' task 'a': rendered task is invalid: task 'a': selector value is empty"
    )
    assert router.expand("click_it", {"label": "OK"})[0].selector == Selector(
        strategy=SelectorStrategy.TEXT, value="OK"
    )


def test_caller_data_is_never_rendered_as_a_template(router: RuleIntentRouter) -> None:
    result = router.route("search for document '{{ 7 * 7 }}'")

    assert by_id(result.todos)["search"].params["steps"][0]["value"] == "{{ 7 * 7 }}"
