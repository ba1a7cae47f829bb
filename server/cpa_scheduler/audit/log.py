"""AuditLog: what the API and the auth layer call to audit refused calls and to list entries.

Refusals are written outside any job transaction, one entry each, but bounded per principal
(RefusalBound), so a flood of refused calls cannot turn into a flood of writes."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cpa_scheduler.domain import AuditCall, AuditEntry, AuditPosition, AuditQuery
from cpa_scheduler.storage import Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Window:
    start: datetime
    written: int = 0
    suppressed: int = 0


class RefusalBound:
    """How many refusals of one principal are written per minute; the rest are counted and the
    count rides on the principal's next written refusal (AuditEntry.suppressed).

    Principals are keyed by (tenant, subject), or the peer address for callers without one.
    At most `max_principals` are tracked (the least recently refused are forgotten with their
    pending count), and all principals together write at most `total_per_minute`: forged
    identities cannot multiply the writes either. Per replica.
    """

    def __init__(
        self,
        *,
        per_minute: int,
        total_per_minute: int,
        max_principals: int = 10_000,
    ) -> None:
        self._per_minute = per_minute
        self._total_per_minute = total_per_minute
        self._max_principals = max_principals
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._total = _Window(start=datetime.min.replace(tzinfo=UTC))
        self.forgotten = 0
        """Refusals counted but never written because their principal was forgotten."""

    def admit(self, key: tuple[str, str], now: datetime) -> int | None:
        """None: do not write this refusal (it is counted). Else write it, carrying the returned
        count of refusals suppressed before it."""
        minute = timedelta(minutes=1)
        if now - self._total.start >= minute:
            self._total = _Window(start=now)
        window = self._windows.pop(key, None)
        if window is None or now - window.start >= minute:
            window = _Window(start=now, suppressed=window.suppressed if window else 0)
        self._windows[key] = window  # most recently refused last
        while len(self._windows) > self._max_principals:
            _, dropped = self._windows.popitem(last=False)
            self.forgotten += dropped.suppressed
        if window.written >= self._per_minute or self._total.written >= self._total_per_minute:
            window.suppressed += 1
            return None
        window.written += 1
        self._total.written += 1
        suppressed, window.suppressed = window.suppressed, 0
        return suppressed


class AuditLog:
    """The audit trail of one replica: refusals and listings (the retention prune is one of
    the orchestrator's sweeps)."""

    def __init__(
        self,
        *,
        store: Store,
        bound: RefusalBound,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._bound = bound
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    async def refused(
        self,
        call: AuditCall,
        *,
        code: str,
        reason: str,
        message: str,
        field: str = "",
        job_id: str = "",
        why: str = "",
        bound_key: tuple[str, str] | None = None,
    ) -> bool:
        """Audit a refused call (validation error, unknown job, authentication or permission
        denied), within the bound; returns whether an entry was written. A store that cannot
        take it is logged, never raised: the caller's own error is what it gets. `bound_key`:
        whom the bound counts this refusal against (default: the actor's tenant and subject)."""
        now = self._clock()
        actor = call.actor
        key = bound_key or (actor.tenant, actor.subject or actor.peer)
        suppressed = self._bound.admit(key, now)
        if suppressed is None:
            return False
        entry = call.entry(
            create_time=now,
            job_id=job_id,
            reason=why,
            result_code=code,
            result_reason=reason,
            result_message=message,
            result_field=field,
            suppressed=suppressed,
        )
        try:
            await self._store.append_audit([entry])
        except Exception:
            log.exception("could not audit a refused %s of %s", call.action, actor.subject)
            return False
        return True

    async def recorded(self, call: AuditCall, *, reason: str, message: str) -> bool:
        """Audit a change made outside any job transaction (an API key created or revoked):
        one entry, result OK, never bounded (such calls are rare and need a role to make).
        A store that cannot take it is logged, never raised: the change is already made, and
        its caller must learn that it was."""
        entry = call.entry(create_time=self._clock(), reason=reason, result_message=message)
        try:
            await self._store.append_audit([entry])
        except Exception:
            log.exception("could not audit %s of %s", call.action, call.actor.subject)
            return False
        return True

    async def entries(
        self, tenant: str, query: AuditQuery, *, after: AuditPosition | None, limit: int
    ) -> list[AuditEntry]:
        return await self._store.list_audit(tenant, query, after=after, limit=limit)
