"""What the planner reads from memory, and what the scheduler writes to it.

Short-term memory is a conversation's recent messages and results (a LAM conversation id, with a
TTL); long-term memory is finished jobs (request text, plan, outcome) searchable by meaning.
Everything is scoped by tenant: no call reads across tenants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Outcome = Literal["succeeded", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationEntry:
    """One message or result of a conversation, oldest first when listed."""

    role: Literal["user", "scheduler", "result"]
    text: str
    data: Mapping[str, Any] = field(default_factory=dict)
    at_unix_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryRecord:
    """A finished job remembered: its request text, the plan it ran (ToDos as JSON objects),
    how it ended and, when it failed, why."""

    memory_id: str
    tenant: str
    text: str
    plan: Sequence[Mapping[str, Any]] = ()
    outcome: Outcome = "succeeded"
    failure_reason: str = ""
    job_id: str = ""
    created_unix_s: float = 0.0


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """A record found by a search, with its similarity (cosine, higher is closer)."""

    record: MemoryRecord
    score: float


@dataclass(frozen=True, slots=True)
class Selection:
    """Which of a tenant's records a delete takes: the one of `memory_id`, those remembering
    `job_id`, or (neither set) all of them."""

    memory_id: str = ""
    job_id: str = ""

    def __post_init__(self) -> None:
        if self.memory_id and self.job_id:
            raise ValueError("select by memory_id or by job_id, not both")


class ConversationMemory(Protocol):
    """Short-term memory: recent entries of a conversation, forgotten after the TTL."""

    async def append(self, tenant: str, conversation_id: str, entry: ConversationEntry) -> None: ...

    async def recent(
        self, tenant: str, conversation_id: str, *, limit: int = 20
    ) -> list[ConversationEntry]: ...


class SemanticMemory(Protocol):
    """Long-term memory of finished jobs, searched by the meaning of their request text."""

    async def put(self, record: MemoryRecord) -> MemoryRecord: ...

    async def search(
        self, tenant: str, text: str, *, k: int = 5, outcome: Outcome | None = None
    ) -> list[MemoryHit]: ...

    async def delete(self, tenant: str, selection: Selection) -> int:
        """Delete the tenant's records `selection` names; how many there were (0 for an id
        that is unknown or another tenant's: a delete is idempotent)."""
        ...

    async def sweep_expired(self, *, batch: int) -> int:
        """Delete at most `batch` records (of any tenant) older than the retention; how many."""
        ...
