"""Capability matching: what a task needs (a Requirement) and whether an agent offers it."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cpa_scheduler.domain import ToDo

# What a queue key's readable part keeps; the rest becomes "_" (the digest tells keys apart).
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# Ends the key of a requirement pinned to an agent: the Redis queue forgets such a requirement
# once its stream is empty (see queue/redis_queue.py).
PINNED_KEY_SUFFIX = "~pinned"


@dataclass(frozen=True, slots=True)
class Requirement:
    """What an agent must offer to run a task; tasks with equal requirements share a queue.

    `agent_id` pins the requirement to one agent: the task belongs to a session bound to that
    agent (domain/sessions.py). Empty for every other task, whose key is as it always was.
    """

    tenant: str
    action: str
    capabilities: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()
    agent_id: str = ""

    @classmethod
    def of(cls, tenant: str, todo: ToDo, agent_id: str = "") -> Requirement:
        return cls(
            tenant=tenant,
            action=todo.action,
            capabilities=todo.required_capabilities,
            labels=tuple(sorted(todo.required_labels.items())),
            agent_id=agent_id,
        )

    @property
    def key(self) -> str:
        """A stable name, usable as a queue name, that no other requirement has: a readable
        start (tenant and action, other characters replaced, cut short) and the SHA-256 of
        the requirement as canonical JSON (sorted, no free separators to collide on)."""
        parts: list[object] = [
            self.tenant,
            self.action,
            sorted(self.capabilities),
            [list(p) for p in sorted(self.labels)],
        ]
        if self.agent_id:  # appended only when pinned: unpinned keys stay what they were
            parts.append({"agent_id": self.agent_id})
        canonical = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
        readable = _UNSAFE.sub("_", f"{self.tenant}.{self.action}")[:48]
        return f"{readable}~{digest}{PINNED_KEY_SUFFIX if self.agent_id else ''}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentProfile:
    """Who an agent is and what it said it can do in its hello."""

    agent_id: str
    tenant: str
    name: str = ""
    version: str = ""
    actions: frozenset[str] = frozenset()
    capabilities: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    slots: int = 1

    def can_run(self, requirement: Requirement) -> bool:
        return (
            requirement.tenant == self.tenant
            and (not requirement.agent_id or requirement.agent_id == self.agent_id)
            and requirement.action in self.actions
            and requirement.capabilities <= self.capabilities
            and all(self.labels.get(k) == v for k, v in requirement.labels)
        )

    def missing(self, requirement: Requirement) -> str:
        """What this agent lacks for `requirement`, in words ("" when it can run it)."""
        if requirement.tenant != self.tenant:
            return "serves another tenant"
        if requirement.agent_id and requirement.agent_id != self.agent_id:
            return f"does not hold the task's session (agent {requirement.agent_id!r} does)"
        if requirement.action not in self.actions:
            return f"does not offer action {requirement.action!r}"
        lacking = sorted(requirement.capabilities - self.capabilities)
        if lacking:
            return f"lacks capabilities {', '.join(lacking)}"
        wrong = [f"{k}={v}" for k, v in requirement.labels if self.labels.get(k) != v]
        if wrong:
            return f"lacks labels {', '.join(wrong)}"
        return ""


def unmet_requirement(requirement: Requirement, profiles: Iterable[AgentProfile]) -> str | None:
    """What none of `profiles` offers for `requirement`, in words; None when one can run it.

    Names the missing action, capabilities or labels, and what the nearest agents lack.
    """
    relevant = [p for p in profiles if p.tenant == requirement.tenant]
    if any(p.can_run(requirement) for p in relevant):
        return None
    if requirement.agent_id:
        return (
            f"waiting for agent {requirement.agent_id!r}, which holds the task's session and is "
            "not connected (the session restarts on another agent if it stays away for a lease)"
        )
    needs = ", ".join(
        [f"action {requirement.action!r}"]
        + [f"capability {c!r}" for c in sorted(requirement.capabilities)]
        + [f"label {k}={v}" for k, v in requirement.labels]
    )
    near = [p for p in relevant if requirement.action in p.actions][:3]
    lacks = "; ".join(f"agent {p.agent_id!r} {p.missing(requirement)}" for p in near)
    return f"no connected agent offers {needs}" + (f" ({lacks})" if lacks else "")
