"""Per-tenant quotas on submissions: active jobs (not yet SUCCEEDED, FAILED or CANCELLED) and
queued tasks (ready, waiting for an agent).

A submission is checked against the tenant's counts as read from the store (shared by every
replica) at most once per `cache_s`; in between, this replica adds what it admitted itself
(reserved before the commit, given back when nothing was created), so its own concurrent
submissions see each other. What escapes: other replicas' submissions within one `cache_s`,
and a reservation made while a refresh is under way. A tenant can so pass a quota by at most
what the other replicas admit in `cache_s` (docs/SECURITY.md states the tolerance). Tenants
without a quota cost nothing: no count is read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cpa_scheduler.domain import Job, LimitExceeded, Reason
from cpa_scheduler.storage import Store

from .tenant_limits import LimitsTable, TenantLimits


@dataclass(slots=True)
class _Counts:
    active_jobs: int
    queued_tasks: int
    read_at: float


def _ready_tasks(job: Job) -> int:
    return len(job.changes.queued)


@dataclass(slots=True)
class Reservation:
    """What one admitted submission added to its tenant's counts, until it is settled."""

    counts: _Counts | None = None
    jobs: dict[str, int] = field(default_factory=dict)  # job id -> its ready tasks

    def settle(self, created: Iterable[str]) -> None:
        """Give back what the jobs not `created` (failed, or a request id's earlier job) took."""
        if self.counts is None:
            return
        for job_id in set(self.jobs) - set(created):
            self.counts.active_jobs -= 1
            self.counts.queued_tasks -= self.jobs.pop(job_id)


class Quotas:
    def __init__(
        self,
        store: Store | None,
        table: LimitsTable,
        *,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._table = table
        self._cache_s = cache_s
        self._clock = clock
        self._counts: dict[str, _Counts] = {}
        self._reading: dict[str, asyncio.Future[_Counts]] = {}
        self.enabled = store is not None and table.any_quota

    async def reserve(self, tenant: str, jobs: Sequence[Job]) -> Reservation:
        """Admit `jobs` of `tenant` (LimitExceeded QUOTA_EXCEEDED beyond a quota) and count them
        until the reservation is settled."""
        if not self.enabled:
            return Reservation()
        limits = self._table.of(tenant)
        if not (limits.max_active_jobs or limits.max_queued_tasks):
            return Reservation()
        counts = await self._current(tenant)
        tasks = sum(_ready_tasks(job) for job in jobs)
        _check(limits, "active_jobs", counts.active_jobs, len(jobs))
        _check(limits, "queued_tasks", counts.queued_tasks, tasks)
        counts.active_jobs += len(jobs)
        counts.queued_tasks += tasks
        return Reservation(counts, {job.job_id: _ready_tasks(job) for job in jobs})

    async def reserve_retry(self, tenant: str, job_id: str) -> Reservation:
        """Admit re-driving one job (it becomes active again); its tasks are not known yet."""
        if not self.enabled or not self._table.of(tenant).max_active_jobs:
            return Reservation()
        counts = await self._current(tenant)
        _check(self._table.of(tenant), "active_jobs", counts.active_jobs, 1)
        counts.active_jobs += 1
        return Reservation(counts, {job_id: 0})

    async def _current(self, tenant: str) -> _Counts:
        counts = self._counts.get(tenant)
        if counts is not None and self._clock() - counts.read_at < self._cache_s:
            return counts
        reading = self._reading.get(tenant)
        if reading is None:  # one read per tenant at a time; the others wait for it
            reading = asyncio.ensure_future(self._read(tenant))
            self._reading[tenant] = reading
            reading.add_done_callback(lambda _: self._reading.pop(tenant, None))
        return await asyncio.shield(reading)

    async def _read(self, tenant: str) -> _Counts:
        assert self._store is not None
        active, queued = await self._store.tenant_load(tenant)
        now = self._clock()
        if len(self._counts) >= _MAX_TENANTS:  # forget the stale ones: read again when needed
            fresh = self._cache_s
            self._counts = {t: c for t, c in self._counts.items() if now - c.read_at < fresh}
        counts = self._counts[tenant] = _Counts(active, queued, now)
        return counts


# Tenants whose counts are kept before stale ones are dropped.
_MAX_TENANTS = 10_000
_QUOTA_WORDS = {"active_jobs": "active jobs", "queued_tasks": "queued tasks"}


def _check(limits: TenantLimits, quota: str, current: int, requested: int) -> None:
    limit = limits.max_active_jobs if quota == "active_jobs" else limits.max_queued_tasks
    if not limit or current + requested <= limit:
        return
    raise LimitExceeded(
        f"quota: the tenant has {current} {_QUOTA_WORDS[quota]} and this submission adds "
        f"{requested}; its limit is {limit}. Retry once some of its jobs have ended",
        reason=Reason.QUOTA_EXCEEDED,
        metadata={
            "quota": quota,
            "current": str(current),
            "requested": str(requested),
            "limit": str(limit),
        },
    )
