"""The planner's prompts: Jinja2 files in prompts/, rendered in a sandbox with StrictUndefined
(a variable a template names but the code does not pass is an error, not an empty string).

Templates are ours, but what they render is not: request text, memories and agents' capability
names come from callers, so the sandbox keeps a template from reaching Python internals even if
one is edited carelessly, and autoescape is off because the output is plain text for a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from cpa_scheduler.llm.interface import Message

from .actions import ActionCatalog
from .intent_catalog import IntentCatalog
from .task_plan import Problem

if TYPE_CHECKING:
    from cpa_scheduler.memory.interface import ConversationEntry, MemoryHit
    from cpa_scheduler.policy.rules import Policy

PROMPTS_DIR = Path(__file__).parent / "prompts"

_ENVIRONMENT = SandboxedEnvironment(
    loader=FileSystemLoader(PROMPTS_DIR),
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _render(name: str, **values: Any) -> str:
    return _ENVIRONMENT.get_template(name).render(**values).strip()


@dataclass(frozen=True, slots=True)
class Prompts:
    """Renders the prompts of one catalog (the intents do not change between requests, so
    their part of the classification prompt is rendered once)."""

    intent_system: str

    @classmethod
    def of(cls, catalog: IntentCatalog) -> Prompts:
        intents = [
            {
                "name": intent.name,
                "description": intent.description,
                "parameters": [
                    {"name": p.name, "required": p.required, "description": p.description}
                    for p in intent.parameters
                ],
                "phrasings": [pattern.description for pattern in intent.patterns],
            }
            for intent in catalog.intents
        ]
        return cls(intent_system=_render("intent_system.jinja2", intents=intents))

    def classification(self, text: str) -> list[Message]:
        return [
            Message("system", self.intent_system),
            Message("user", _render("intent_user.jinja2", text=text)),
        ]


def planning(
    text: str,
    *,
    actions: ActionCatalog,
    context: Mapping[str, Any] | None = None,
    policy: Policy | None = None,
    memories: Sequence[MemoryHit] = (),
    conversation: Sequence[ConversationEntry] = (),
) -> list[Message]:
    """The task-planning prompt: the action catalog, the tenant's policy, similar successes as
    examples and similar failures as warnings, the conversation and the request."""
    records = [hit.record for hit in memories]
    system = _render(
        "plan_system.jinja2",
        actions=[actions.actions[name] for name in actions.names],
        policy=policy_summary(policy),
        successes=[r for r in records if r.outcome == "succeeded"],
        failures=[r for r in records if r.outcome == "failed"],
    )
    user = _render(
        "plan_user.jinja2",
        text=text,
        context=dict(context or {}),
        conversation=[{"role": e.role, "text": e.text} for e in conversation],
    )
    return [Message("system", system), Message("user", user)]


def repair(problems: Sequence[Problem]) -> Message:
    """The message that sends a proposal's problems back to the model."""
    return Message("user", _render("plan_repair.jinja2", problems=problems))


def policy_summary(policy: Policy | None) -> list[str]:
    """The tenant's policy in lines a model can follow (none without a policy)."""
    if policy is None:
        return []
    lines = []
    if policy.denied_actions:
        lines.append("actions denied: " + ", ".join(sorted(policy.denied_actions)))
    if policy.allowed_apps is not None:
        lines.append("apps allowed: " + (", ".join(sorted(policy.allowed_apps)) or "none"))
    for label, hosts in (("URLs", policy.urls), ("mail recipients", policy.mail_domains)):
        if hosts is not None:
            entries = sorted(hosts.exact) + [f"*{suffix}" for suffix in hosts.suffixes]
            lines.append(f"{label} only at: " + (", ".join(entries) or "none"))
    if policy.pii_rules or policy.pii_default.value != "allow":
        lines.append("personal data (PII) in params may be refused or masked")
    return lines
