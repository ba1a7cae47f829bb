"""Each rule type refuses what it should and allows what it should, naming rule and field."""

from __future__ import annotations

from typing import Any

import pytest

from cpa_scheduler.domain import Reason, Selector, SelectorStrategy, ToDo
from cpa_scheduler.policy import PiiAction, Policy, PolicyViolation, check_request, parse_policy

POLICY = """
actions:
  deny: [uia, shell.exec]
apps:
  allow: [excel, 'C:\\Program Files\\SAP\\saplogon.exe']
urls:
  allow: [portal.example.com, '*.intranet.example']
callback_urls:
  allow: [hooks.example.com]
mail:
  allow_domains: [example.com, '*.example.org']
pii:
  default_action: refuse
  rules:
    - field: params.to
      detectors: [email]
      action: allow
    - field: params.cc
      detectors: [email]
      action: allow
    - field: params.body
      action: redact
    - field: request.text
      detectors: [phone]
      action: allow
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(POLICY, source="acme.yaml")


def todo(action: str, params: dict[str, Any] | None = None, **fields: Any) -> ToDo:
    return ToDo(id="t1", action=action, params=params or {}, **fields)


def refusal(policy: Policy, item: ToDo) -> tuple[str, str] | None:
    decision = policy.first_refusal(item)
    return None if decision is None else (decision.rule, decision.field)


def test_action_blocklist(policy: Policy) -> None:
    assert refusal(policy, todo("shell.exec")) == ("actions.deny", "action")
    assert refusal(policy, todo("echo")) is None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"app": "Excel"}, None),
        ({"app": "D:/Other/SAPLOGON.EXE"}, None),  # the file name, case and .exe aside
        ({"app": "saplogon"}, None),
        ({"app": "notepad"}, ("apps.allow", "params.app")),
        ({"app": ["excel"]}, ("apps.allow", "params.app")),  # not a name: refused
        ({}, ("apps.allow", "params.app")),  # open_app must name what it starts
    ],
)
def test_app_allowlist(policy: Policy, params: dict[str, Any], expected: Any) -> None:
    assert refusal(policy, todo("open_app", params)) == expected


def test_app_allowlist_applies_to_desktop_actions_only(policy: Policy) -> None:
    assert refusal(policy, todo("echo", {"app": "notepad"})) is None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"op": "goto", "url": "https://portal.example.com/login"}, None),
        ({"op": "goto", "url": "https://a.b.intranet.example/"}, None),
        ({"op": "goto", "url": "about:blank"}, None),
        ({"op": "goto", "url": "https://evil.example.net/"}, ("urls.allow", "params.url")),
        # The host, not the text before it: user info does not smuggle a host in.
        (
            {"op": "goto", "url": "https://portal.example.com@evil.net/"},
            ("urls.allow", "params.url"),
        ),
        ({"op": "goto", "url": "https://intranet.example/"}, ("urls.allow", "params.url")),
        ({"op": "goto", "url": "file:///etc/passwd"}, ("urls.allow", "params.url")),
        (
            {
                "steps": [
                    {"op": "goto", "url": "https://portal.example.com"},
                    {"op": "download", "url": "http://x.io/f", "artifact": "f"},
                ]
            },
            ("urls.allow", "params.steps[1].url"),
        ),
        ({"op": "goto", "url": {"href": "https://evil.net"}}, ("urls.allow", "params.url")),
    ],
)
def test_url_allowlist(policy: Policy, params: dict[str, Any], expected: Any) -> None:
    assert refusal(policy, todo("playwright", params)) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"to": ["a@example.com"], "cc": "b@sub.example.org; c@EXAMPLE.COM"}, None),
        ({"to": ["a@example.com", "x@gmail.com"]}, ("mail.allow_domains", "params.to[1]")),
        ({"to": "a@example.com", "bcc": "spy@evil.net"}, ("mail.allow_domains", "params.bcc")),
        ({"to": ["a@example.org"]}, ("mail.allow_domains", "params.to[0]")),  # apex not in *.
        ({"to": ["nobody"]}, ("mail.allow_domains", "params.to[0]")),
        ({"to": [42]}, ("mail.allow_domains", "params.to[0]")),
    ],
)
def test_mail_recipient_domains(policy: Policy, params: dict[str, Any], expected: Any) -> None:
    assert refusal(policy, todo("send_mail", params)) == expected


def test_pii_actions_per_field(policy: Policy) -> None:
    # E-mail addresses in params.to are allowed; an IBAN in the body is redacted (allowed).
    mail = todo(
        "send_mail",
        {"to": ["a@example.com"], "body": "IBAN DE89370400440532013000, card 4111111111111111"},
    )
    assert refusal(policy, mail) is None
    decisions = [d for d in policy.todo_decisions(mail) if d.findings]
    assert {(d.field, d.action) for d in decisions} == {
        ("params.to[0]", PiiAction.ALLOW),
        ("params.body", PiiAction.REDACT),
    }
    # Anywhere else the default refuses: the ToDo's text, a nested param.
    assert refusal(policy, todo("echo", text="call me: +49 30 1234567")) == (
        "pii.default_action",
        "text",
    )
    nested = todo("echo", {"rows": [{"note": "id 86095742719"}]})
    assert refusal(policy, nested) == ("pii.default_action", "params.rows[0].note")
    selector = todo(
        "click", selector=Selector(strategy=SelectorStrategy.TEXT, value="DE89370400440532013000")
    )
    assert refusal(policy, selector) == ("pii.default_action", "selector.value")
    # Checksum-invalid look-alikes are no PII: nothing to refuse.
    assert refusal(policy, todo("echo", {"iban": "DE88370400440532013000"})) is None


def test_request_text_and_callback(policy: Policy) -> None:
    assert policy.request_refusal(text="ring +49 30 1234567") is None  # phone allowed there
    decision = policy.request_refusal(text="my IBAN is DE89370400440532013000")
    assert decision is not None
    assert (decision.rule, decision.field) == (
        "pii.default_action",
        "request.text",
    )
    assert policy.request_refusal(callback_url="https://hooks.example.com/cpa") is None
    decision = policy.request_refusal(callback_url="https://evil.net/cb")
    assert decision is not None
    assert decision.rule == "callback_urls.allow"


def test_violation_names_todo_rule_and_field(policy: Policy) -> None:
    todos = [
        todo("echo"),
        ToDo(id="go", action="playwright", params={"op": "goto", "url": "https://evil.net"}),
    ]
    with pytest.raises(PolicyViolation) as caught:
        check_request(policy, todos)
    error = caught.value
    assert error.reason is Reason.POLICY_VIOLATION
    assert error.field == "todos[1].params.url"
    assert dict(error.metadata) == {"rule": "urls.allow", "todo": "go", "todo_field": "params.url"}
    assert "task 'go' field params.url" in error.message
    assert "evil.net" in error.message
    # The error never carries a PII value, only its kind.
    with pytest.raises(PolicyViolation) as caught:
        check_request(policy, [todo("echo", {"iban": "DE89370400440532013000"})])
    assert "DE89" not in caught.value.message
    assert "iban" in caught.value.message


def test_an_empty_section_restricts_nothing() -> None:
    policy = parse_policy("description: nothing restricted\n", source="open.yaml")
    for item in (
        todo("uia", {"app": "anything"}),
        todo("playwright", {"op": "goto", "url": "https://anywhere.net"}),
        todo("send_mail", {"to": ["x@anywhere.net"], "body": "DE89370400440532013000"}),
    ):
        assert policy.first_refusal(item) is None


def test_a_rule_on_a_nested_field_is_applied_under_an_allowing_default() -> None:
    # The default allows: only fields a rule names are scanned, however deep they lie, and a
    # rule naming a whole value covers what is inside it.
    nested = parse_policy(
        "pii:\n  default_action: allow\n  rules:\n"
        "    - {field: params.rows.note, action: refuse}\n"
        "    - {field: params.card, detectors: [card], action: refuse}\n",
        source="n.yaml",
    )
    phone = "call +49 30 1234567"
    assert refusal(nested, todo("echo", {"rows": [{"sku": "A-1"}, {"note": phone}]})) == (
        "pii.rules[0]",
        "params.rows[1].note",
    )
    assert refusal(nested, todo("echo", {"rows": [{"memo": phone}], "note": phone})) is None
    assert refusal(nested, todo("echo", {"card": {"number": "4111 1111 1111 1111"}})) == (
        "pii.rules[1]",
        "params.card.number",
    )
    # Under an allowing default and no rule for them, params are never looked at.
    assert not nested.pii_acts_under("params.rows2", frozenset({PiiAction.REFUSE}))
    assert nested.pii_acts_under("params.rows", frozenset({PiiAction.REFUSE}))
