"""`cpa policy check FILE --todos PLAN.yaml`: explain offline what a tenant policy decides.

Reads a policy file (docs/POLICY.md) and a todos file (as `cpa submit --todos` takes it), and
prints every decision: which rule allowed or refused which ToDo field, and the PII found, as
masked samples (never the values). The server's own checks are the same code (cpa_scheduler.
policy). Exit code: 0 allowed, 1 refused, 2 a file that cannot be read or is invalid.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cpa_scheduler.api import convert
from cpa_scheduler.domain import ToDo
from cpa_scheduler.policy import Decision, PiiAction, Policy, load_policy

from .common import CliError, emit
from .output import table
from .todos_file import load_todos

EXIT_ALLOWED = 0
EXIT_REFUSED = 1


def register(commands: Any) -> None:
    policy: argparse.ArgumentParser = commands.add_parser(
        "policy",
        help="check ToDos against a tenant policy, offline",
        description="Tenant policies (CPA_POLICY_DIR, docs/POLICY.md), read here from files.",
    )
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check: argparse.ArgumentParser = actions.add_parser(
        "check",
        help="explain what a policy decides about a plan",
        description="Check the ToDos of PLAN.yaml (and optionally a request text and callback "
        "URL) against the policy FILE and explain each decision: the rule, the ToDo, the "
        "field, and the PII found (masked). Exit code 0: allowed; 1: refused; 2: a file that "
        "cannot be read or is invalid.",
    )
    check.add_argument("file", metavar="FILE", help="the policy file (<tenant>.yaml)")
    check.add_argument(
        "--todos", required=True, metavar="PLAN.yaml", help="the ToDos, as cpa submit takes them"
    )
    check.add_argument("--text", default="", help="the request's text (JobSpec.text)")
    check.add_argument("--callback-url", default="", help="the job's callback URL")
    check.add_argument("--json", action="store_true", help="print the decisions as JSON")
    check.set_defaults(run=_check)


def _check(arguments: argparse.Namespace) -> int:
    try:
        policy = load_policy(arguments.file)
    except OSError as error:
        raise CliError(f"cannot read the policy {arguments.file}: {error.strerror}") from None
    todos = convert.todos_from_proto(load_todos(arguments.todos), "todos")
    decisions = explain(policy, todos, text=arguments.text, callback_url=arguments.callback_url)
    refused = [d for d in decisions if not d.allowed]
    if arguments.json:
        emit(
            json.dumps(
                {
                    "policy": policy.source,
                    "allowed": not refused,
                    "decisions": [_as_json(d) for d in decisions],
                },
                indent=2,
            )
        )
    else:
        _print(policy, decisions, refused)
    return EXIT_REFUSED if refused else EXIT_ALLOWED


def explain(
    policy: Policy, todos: list[ToDo], *, text: str = "", callback_url: str = ""
) -> list[Decision]:
    """Every decision, request first, then ToDo by ToDo in plan order."""
    decisions = list(policy.request_decisions(text=text, callback_url=callback_url))
    for todo in todos:
        decisions.extend(policy.todo_decisions(todo))
    return decisions


def _verdict(decision: Decision) -> str:
    if not decision.allowed:
        return "REFUSE"
    return "REDACT" if decision.action is PiiAction.REDACT else "ALLOW"


def _print(policy: Policy, decisions: list[Decision], refused: list[Decision]) -> None:
    emit(f"policy {policy.source}")
    if not decisions:
        emit("no rule of the policy applies to these ToDos")
    else:
        rows: list[tuple[str, ...]] = [
            (_verdict(d), d.todo or "(request)", d.field, d.rule, d.detail) for d in decisions
        ]
        emit("\n".join(table(("DECISION", "TODO", "FIELD", "RULE", "WHY"), rows)))
    findings = [(d, f) for d in decisions for f in d.findings]
    if findings:
        emit("pii found")
        pii_rows: list[tuple[str, ...]] = [
            (d.todo or "(request)", d.field, f.detector.value, f.sample, _verdict(d))
            for d, f in findings
        ]
        header = ("TODO", "FIELD", "KIND", "SAMPLE", "DECISION")
        emit("\n".join(table(header, pii_rows, indent="  ")))
    if refused:
        first = refused[0]
        where = f"task {first.todo!r} field {first.field}" if first.todo else first.field
        emit(f"refused: {where}: {first.detail} (rule {first.rule})")
    else:
        emit("allowed")


def _as_json(decision: Decision) -> dict[str, Any]:
    return {
        "decision": _verdict(decision).lower(),
        "todo": decision.todo,
        "field": decision.field,
        "rule": decision.rule,
        "detail": decision.detail,
        "pii": [
            {"kind": f.detector.value, "sample": f.sample, "label": f.label}
            for f in decision.findings
        ],
    }
