"""Skipping PII scans where no detector's action could change the answer (Policy.pii_acts) must
not change an answer: first_refusal is the first refusal of the full decisions, and redaction
hides exactly the non-allowed findings of a full scan, for any policy and text."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cpa.scheduler.v1 import job_pb2
from cpa_scheduler.domain import ToDo
from cpa_scheduler.policy.loading import parse_policy
from cpa_scheduler.policy.model import PiiAction
from cpa_scheduler.policy.pii import redact, scan
from cpa_scheduler.policy.redaction import redact_job
from cpa_scheduler.policy.rules import Policy

DETECTORS = ["iban", "card", "steuer_id", "email", "phone"]
FIELDS = ["text", "description", "params.note", "params.iban", "params.*", "request.text"]
# Texts with PII of every kind, some overlapping in shape (an IBAN's digits, a phone's).
PIECES = [
    "DE89370400440532013000",
    "DE89 3704 0044 0532 0130 00",
    "4111 1111 1111 1111",
    "65929970489",
    "buchhaltung@acme.example",
    "+49 89 1234567",
    "089 1234 5678",
    "Rechnung 2026-17",
    "Betrag 1.234,50 EUR",
    " ",
]

texts = st.lists(st.sampled_from(PIECES), max_size=6).map(" ".join)
actions = st.sampled_from([a.value for a in PiiAction])
rules = st.lists(
    st.fixed_dictionaries(
        {"field": st.sampled_from(FIELDS), "action": actions},
        optional={"detectors": st.lists(st.sampled_from(DETECTORS), min_size=1, unique=True)},
    ),
    max_size=4,
)


def _policy(default: str, pii_rules: list[dict[str, Any]], detectors: list[str]) -> Policy:
    lines = ["version: 1", "pii:", f"  default_action: {default}", f"  detectors: {detectors}"]
    lines.append("  rules:" if pii_rules else "  rules: []")
    for rule in pii_rules:
        extra = f", detectors: {rule['detectors']}" if "detectors" in rule else ""
        lines.append(f"    - {{field: '{rule['field']}', action: {rule['action']}{extra}}}")
    return parse_policy("\n".join(lines) + "\n")


@settings(max_examples=300, deadline=None)
@given(
    default=actions,
    pii_rules=rules,
    detectors=st.lists(st.sampled_from(DETECTORS), min_size=1, unique=True),
    text=texts,
    description=texts,
    note=texts,
    iban=texts,
)
def test_skipped_scans_change_no_answer(
    default: str,
    pii_rules: list[dict[str, Any]],
    detectors: list[str],
    text: str,
    description: str,
    note: str,
    iban: str,
) -> None:
    policy = _policy(default, pii_rules, detectors)
    todo = ToDo(
        id="t",
        action="echo",
        text=text,
        description=description,
        params={"note": note, "iban": iban},
    )
    full = next((d for d in policy.todo_decisions(todo) if not d.allowed), None)
    assert policy.first_refusal(todo) == full
    full_request = next((d for d in policy.request_decisions(text=text) if not d.allowed), None)
    assert policy.request_refusal(text=text) == full_request

    job = job_pb2.Job()
    job.spec.text = text
    shown = job.tasks.add().todo
    shown.text, shown.description = text, description
    shown.params.update({"note": note, "iban": iban})
    redact_job(policy, job)

    def hidden(path: str, value: str) -> str:
        found = [
            f
            for f in scan(value, policy.pii_detectors)
            if policy.pii_action(path, f.detector)[0] is not PiiAction.ALLOW
        ]
        return redact(value, found) if found else value

    if policy.redacts:
        assert job.spec.text == hidden("request.text", text)
        assert job.tasks[0].todo.text == hidden("text", text)
        assert job.tasks[0].todo.description == hidden("description", description)
        assert job.tasks[0].todo.params["note"] == hidden("params.note", note)
        assert job.tasks[0].todo.params["iban"] == hidden("params.iban", iban)
