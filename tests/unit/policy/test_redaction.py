"""What the API shows of a job under a redacting policy: labels instead of disallowed PII."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import job_pb2
from cpa_scheduler.policy import parse_policy
from cpa_scheduler.policy.redaction import redact_job

IBAN = "DE89370400440532013000"


def job(**spec: Any) -> job_pb2.Job:
    todo = todo_pb2.ToDo(id="t", text=f"type {IBAN}", description="mail jane@example.com")
    todo.selector.value = f"cell {IBAN}"
    todo.params.update({"rows": [{"iban": IBAN}], "note": "call +49 30 1234567"})
    return job_pb2.Job(spec=job_pb2.JobSpec(**spec), tasks=[job_pb2.Task(todo=todo)])


def test_fields_are_judged_by_their_rules() -> None:
    policy = parse_policy(
        "pii:\n  default_action: redact\n  rules:\n"
        "    - {field: params.note, action: allow}\n"
        "    - {field: description, detectors: [email], action: allow}\n",
        source="p.yaml",
    )
    message = job(text=f"pay {IBAN}")
    redact_job(policy, message)
    todo = message.tasks[0].todo
    assert message.spec.text == "pay [REDACTED:IBAN]"
    assert todo.text == "type [REDACTED:IBAN]"
    assert todo.selector.value == "cell [REDACTED:IBAN]"
    assert json_format.MessageToDict(todo.params)["rows"] == [{"iban": "[REDACTED:IBAN]"}]
    assert todo.params["note"] == "call +49 30 1234567"  # allowed there
    assert todo.description == "mail jane@example.com"


def test_intent_parameters_are_judged_as_the_request_text() -> None:
    policy = parse_policy("pii: {default_action: redact}\n", source="p.yaml")
    message = job(intent=job_pb2.IntentInvocation(name="pay"))
    message.spec.intent.parameters.update({"iban": IBAN, "amount": 12})
    redact_job(policy, message)
    assert dict(message.spec.intent.parameters) == {"iban": "[REDACTED:IBAN]", "amount": 12}


def test_a_policy_that_allows_all_pii_changes_nothing() -> None:
    policy = parse_policy("pii: {default_action: allow}\n", source="p.yaml")
    assert not policy.redacts
    message = job(text=f"pay {IBAN}")
    before = message.SerializeToString()
    redact_job(policy, message)
    assert message.SerializeToString() == before


def test_pii_a_tightened_policy_refuses_is_hidden_in_stored_jobs() -> None:
    # Stored before the policy refused it: shown with its label, never in clear.
    policy = parse_policy("pii: {default_action: refuse}\n", source="p.yaml")
    message = job(text=f"pay {IBAN}")
    redact_job(policy, message)
    assert message.spec.text == "pay [REDACTED:IBAN]"


def test_a_remembered_redaction_is_the_one_a_fresh_walk_gives() -> None:
    # Every answer showing a job redacts it again; the second time comes from memory.
    policy = parse_policy("pii: {default_action: redact}\n", source="p.yaml")
    first, second = job(), job()
    redact_job(policy, first)
    redact_job(policy, second)
    assert second == first
    assert second.tasks[0].todo.text == "type [REDACTED:IBAN]"
    # Another ToDo (one more field) is not mistaken for the remembered one.
    third = job()
    third.tasks[0].todo.params["extra"] = f"also {IBAN}"
    redact_job(policy, third)
    assert third.tasks[0].todo.params["extra"] == "also [REDACTED:IBAN]"
    assert third.tasks[0].todo.params["note"] == first.tasks[0].todo.params["note"]


def test_a_reloaded_policy_does_not_reuse_the_last_ones_redactions() -> None:
    strict = parse_policy("pii: {default_action: redact}\n", source="p.yaml")
    redact_job(strict, job())
    lenient = parse_policy(
        "pii:\n  default_action: redact\n  rules:\n    - {field: text, action: allow}\n",
        source="p.yaml",
    )
    shown = job()
    redact_job(lenient, shown)
    assert shown.tasks[0].todo.text == f"type {IBAN}"
    assert shown.tasks[0].todo.selector.value == "cell [REDACTED:IBAN]"


def test_a_rule_on_a_nested_field_redacts_inside_lists_and_nothing_beside() -> None:
    policy = parse_policy(
        "pii:\n  default_action: allow\n  rules:\n"
        "    - {field: params.rows.iban, action: redact}\n",
        source="p.yaml",
    )
    message = job()
    message.tasks[0].todo.params.update({"other": {"iban": IBAN}})
    redact_job(policy, message)
    params = json_format.MessageToDict(message.tasks[0].todo.params)
    assert params["rows"] == [{"iban": "[REDACTED:IBAN]"}]
    assert params["other"] == {"iban": IBAN}  # no rule there: the default allows
    assert message.tasks[0].todo.text == f"type {IBAN}"
