"""What both semantic stores share: checking a record or a query, and its columns."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .interface import MemoryRecord, Outcome, Selection

OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed")
MAX_K = 100
_DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a tenant's memories live and how many it keeps (docs/MEMORY.md, "Retention").

    `max_age_s` 0: no expiry; `max_per_tenant` 0: no cap. Expired records are hidden from
    searches at once and deleted by the sweep; the cap is kept by every put."""

    max_age_s: float = 0.0
    max_per_tenant: int = 0

    @classmethod
    def of_days(cls, days: float, max_per_tenant: int) -> Retention:
        return cls(days * _DAY_S, max_per_tenant)

    def cutoff(self, now_unix_s: float | None = None) -> float:
        """Records created before this have expired (-inf when nothing expires)."""
        if not self.max_age_s:
            return float("-inf")
        return (time.time() if now_unix_s is None else now_unix_s) - self.max_age_s


# Nothing expires, no cap: a store's default (tests, tools); the server passes the settings'.
KEEP_ALL = Retention()


def selection_filter(tenant: str, selection: Selection, mark: str) -> tuple[str, list[str]]:
    """The condition (and its parameters, `mark` their placeholder) of the tenant's records
    `selection` names: always the tenant first, so no selection reaches another tenant's."""
    condition, parameters = f"tenant = {mark}", [tenant]
    if selection.memory_id:
        return f"{condition} AND memory_id = {mark}", [*parameters, selection.memory_id]
    if selection.job_id:
        return f"{condition} AND job_id = {mark}", [*parameters, selection.job_id]
    return condition, parameters


def prepared(record: MemoryRecord) -> MemoryRecord:
    """`record` with an id and a creation time when it had none; ValueError for what no store
    keeps (no tenant, no text, an unknown outcome)."""
    if not record.tenant:
        raise ValueError("a memory record needs a tenant")
    if not record.text.strip():
        raise ValueError("a memory record needs text")
    if record.outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, not {record.outcome!r}")
    return replace(
        record,
        memory_id=record.memory_id or uuid.uuid4().hex,
        created_unix_s=record.created_unix_s or time.time(),
    )


def check_query(k: int, outcome: Outcome | None) -> None:
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be 1..{MAX_K}, not {k}")
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")


def plan_json(plan: Sequence[Any]) -> str:
    return json.dumps(list(plan), separators=(",", ":"), sort_keys=True)


def record_of(
    memory_id: str,
    tenant: str,
    text: str,
    plan: str | list[Any],
    outcome: str,
    failure_reason: str,
    job_id: str,
    created_unix_s: float,
) -> MemoryRecord:
    """A record from its columns (`plan` as JSON text or already decoded, as jsonb is)."""
    return MemoryRecord(
        memory_id=memory_id,
        tenant=tenant,
        text=text,
        plan=tuple(json.loads(plan) if isinstance(plan, str) else plan),
        outcome="failed" if outcome == "failed" else "succeeded",
        failure_reason=failure_reason,
        job_id=job_id,
        created_unix_s=created_unix_s,
    )
