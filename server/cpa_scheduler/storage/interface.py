"""The storage interface: what the application needs from a store, whatever the backend.

Every method is scoped by tenant where a caller could name a resource. Implementations:
sqlite_store (embedded default); PostgreSQL follows the same contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, TypeVar

from cpa_scheduler.domain import (
    AttemptRef,
    AuditCall,
    AuditEntry,
    AuditPosition,
    AuditQuery,
    Job,
    JobChanges,
    JobEvent,
    JobFilter,
    PagePosition,
    ToDo,
)
from cpa_scheduler.security.api_keys import ApiKeyStore

T = TypeVar("T")


class StoreUnavailableError(RuntimeError):
    """The database cannot be reached; the operation may or may not have been stored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedTask:
    """A QUEUED task as the dispatcher needs it: where it is, what it needs, when it may run."""

    tenant: str
    job_id: str
    todo: ToDo
    attempt: int
    """The number of the attempt that ran last (0 before the first); the next one is +1."""
    not_before: datetime | None = None
    agent_id: str = ""
    """For a task of a session bound to an agent: that agent, the only one that may take it
    (domain/sessions.py); empty otherwise."""
    trace_context: Mapping[str, str] = field(default_factory=dict)
    """The job's W3C context (JobOptions.trace_context): the replica that takes the entry
    assigns under it. Empty when tracing is off, and in entries rebuilt from rows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """A LAM message kept in its conversation (both directions)."""

    tenant: str
    conversation_id: str
    message_id: str
    performative: str
    sender: str
    inbound: bool
    job_id: str
    body_json: str
    create_time: datetime


class CallbackState(StrEnum):
    """Where an outbox row (a callback delivery) stands."""

    PENDING = "PENDING"
    """Not delivered yet: due at next_attempt_time (again, after a failed attempt)."""
    DELIVERED = "DELIVERED"
    """The receiver answered 2xx."""
    DEAD = "DEAD"
    """Given up: a permanent refusal, a forbidden address, or the attempts ran out."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackDelivery:
    """One callback message and how its delivery goes (a row of the outbox)."""

    tenant: str
    delivery_id: str
    message_id: str
    job_id: str
    sequence: int
    """The job event that caused it: messages of one job are sent in this order."""
    event_type: str
    url: str
    body_json: str
    state: CallbackState
    attempts: int
    next_attempt_time: datetime
    last_error: str
    create_time: datetime
    update_time: datetime
    claim_token: str = ""
    """Set by claim_callbacks: the claimer's token, which record_callback_attempt must show."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackOutcome:
    """How one delivery attempt ended: the state it leaves the row in."""

    state: CallbackState
    next_attempt_time: datetime | None = None
    """When PENDING: when to try again."""
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class CallbackPosition:
    """Where a listing of callback deliveries (oldest first) has got to."""

    create_time: datetime
    delivery_id: str


@dataclass(frozen=True, slots=True)
class EndPosition:
    """Where a walk over finished jobs, in order of their end, has got to."""

    end_time: datetime
    job_id: str


class Store(ApiKeyStore, Protocol):
    """Durable state of jobs, tasks, attempts, events and LAM messages (and API keys)."""

    async def create_jobs(self, jobs: Sequence[Job]) -> list[tuple[Job, JobChanges | None]]:
        """Insert `jobs` with their tasks and pending events, all in one transaction or none;
        returns, in order, each job and the changes to carry out after commit. A job whose
        request_id the tenant already used: the existing job and None when the fingerprint
        matches; else RequestIdReused (its index names the job) and nothing is stored. The
        request ids of `jobs` must differ from each other."""
        ...

    async def update_job(
        self, tenant: str, job_id: str, mutate: Callable[[Job], T]
    ) -> tuple[Job, T, JobChanges]:
        """Load the job, apply `mutate` and save what it changed, in one transaction; returns
        the job, mutate's result and the changes to carry out after commit. A DomainError from
        `mutate` rolls back only this update. NotFound(JOB_NOT_FOUND). `mutate` may run more
        than once (a store may retry a batch), so it must only change the job."""
        ...

    async def get_job(self, tenant: str, job_id: str) -> Job:
        """The job with its tasks, or NotFound(JOB_NOT_FOUND)."""
        ...

    async def list_jobs(
        self, tenant: str, job_filter: JobFilter, *, after: PagePosition | None, limit: int
    ) -> list[Job]:
        """Jobs matching the filter, newest first, starting after `after`."""
        ...

    async def list_events(
        self, tenant: str, job_id: str, *, after_sequence: int, limit: int
    ) -> list[JobEvent]:
        """Stored events of a job with sequence > after_sequence, in order."""
        ...

    async def queued_tasks(
        self, *, limit: int, queued_before: datetime | None = None
    ) -> list[QueuedTask]:
        """Tasks QUEUED in any job, oldest first; with `queued_before`, only those queued
        earlier (the reconciler re-publishes what waits suspiciously long)."""
        ...

    async def expired_attempts(self, now: datetime, *, limit: int) -> list[tuple[str, AttemptRef]]:
        """(tenant, attempt) of RUNNING tasks whose lease ended before `now`."""
        ...

    async def overdue_jobs(self, now: datetime, *, limit: int) -> list[tuple[str, str]]:
        """(tenant, job_id) of unfinished jobs whose deadline passed before `now` and that are
        not being stopped yet, earliest deadline first."""
        ...

    async def unstarted_tasks(self, now: datetime, *, limit: int) -> list[tuple[str, str, str]]:
        """(tenant, job_id, task_id) of QUEUED tasks whose schedule-to-start time passed before
        `now`, earliest first."""
        ...

    async def forget_request_ids(self, created_before: datetime, *, limit: int) -> int:
        """Release the request ids of at most `limit` jobs created before `created_before` (their
        retention ended): a new request may use them again. Returns how many were released."""
        ...

    async def prune_events(
        self, ended_before: datetime, *, after: EndPosition | None, limit: int
    ) -> tuple[int, EndPosition | None]:
        """Delete the events of at most `limit` jobs that ended (SUCCEEDED, FAILED, CANCELLED)
        before `ended_before`, taken in order of their end after `after`: all but each job's
        last event, its terminal one, which is always kept. Returns how many events were
        deleted and the position of the last job looked at (`after` when there was none): the
        next call goes on from there."""
        ...

    async def renew_leases(
        self,
        tenant: str,
        agent_id: str,
        attempts: Sequence[AttemptRef],
        lease_until: datetime,
    ) -> list[AttemptRef]:
        """Extend the leases of attempts that are still current (RUNNING at that attempt) on
        `agent_id`, never past an attempt's timeout_at; returns the others (stale, or held by
        another agent: a stream may renew only what its agent holds)."""
        ...

    async def save_message(self, message: StoredMessage) -> None:
        """Keep a LAM message; saving the same (tenant, message_id, inbound) twice is a no-op."""
        ...

    async def conversation_job(self, tenant: str, conversation_id: str) -> str | None:
        """The job a conversation's request created, if any."""
        ...

    # -- callback outbox (rows are written by create_jobs/update_job from JobChanges.callbacks,
    # in the transaction of the change) --------------------------------------------------------

    async def claim_callbacks(
        self, now: datetime, *, limit: int, claim_until: datetime, claim_token: str
    ) -> list[CallbackDelivery]:
        """Take at most `limit` PENDING deliveries due at `now` that nobody holds (no claim, or
        one that ended), oldest due first, and hold them until `claim_until` under
        `claim_token`: no other claimer gets them meanwhile. Only the first PENDING delivery of
        each job is due, so a job's messages go out in order."""
        ...

    async def record_callback_attempt(
        self, delivery_id: str, *, claim_token: str, now: datetime, outcome: CallbackOutcome
    ) -> bool:
        """Count one attempt and apply its outcome, releasing the claim; only while the delivery
        is PENDING and still held under `claim_token` (a claimer whose claim ended and was taken
        over changes nothing). Returns whether it applied."""
        ...

    async def count_pending_callbacks(self, *, limit: int) -> int:
        """How many deliveries are PENDING, every tenant's, counting at most `limit`
        (callbacks_pending, telemetry/metrics.py)."""
        ...

    async def list_callbacks(
        self,
        tenant: str,
        *,
        state: CallbackState | None,
        job_id: str,
        after: CallbackPosition | None,
        limit: int,
    ) -> list[CallbackDelivery]:
        """The tenant's deliveries, oldest first, after `after`; only those in `state` and of
        `job_id` when given."""
        ...

    async def get_callbacks(
        self, tenant: str, delivery_ids: Sequence[str]
    ) -> list[CallbackDelivery]:
        """The tenant's deliveries among `delivery_ids` (others' and unknown ids are left out)."""
        ...

    async def redrive_callbacks(
        self,
        tenant: str,
        delivery_ids: Sequence[str] | None,
        *,
        now: datetime,
        limit: int,
        audit: AuditCall | None = None,
    ) -> list[CallbackDelivery]:
        """Make DEAD deliveries of the tenant PENDING again, due now, their attempts counted
        from 0: those among `delivery_ids`, or (None) the oldest `limit` DEAD ones. Returns them
        as they are now; other ids are left alone. With `audit`, one entry per re-driven
        delivery (its job, `callback <delivery_id>` as reason) in the same transaction."""
        ...

    async def ping(self) -> None:
        """A cheap check that the store answers (SELECT 1), for the health probe; raises when
        it does not. Never on the hot path."""
        ...

    async def tenant_load(self, tenant: str) -> tuple[int, int]:
        """(jobs not yet SUCCEEDED, FAILED or CANCELLED, tasks QUEUED) of a tenant: its quotas'
        counts (security/quotas.py reads them at most once per CPA_QUOTA_CACHE_S)."""
        ...

    # -- audit trail (append-only: there is no update; entries of a job change come in
    # JobChanges.audit and are written by create_jobs/update_job in its transaction) -----------

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Write entries that record no stored change (refused calls), in a transaction of
        their own."""
        ...

    async def list_audit(
        self, tenant: str, query: AuditQuery, *, after: AuditPosition | None, limit: int
    ) -> list[AuditEntry]:
        """The tenant's entries matching `query`, newest first (create_time, then entry_id,
        descending), after `after`."""
        ...

    async def prune_audit(self, created_before: datetime, *, limit: int) -> int:
        """Delete at most `limit` of the oldest entries (any tenant) created before
        `created_before` (the retention); the only way an entry leaves the store. Returns how
        many were deleted."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release the connection."""
        ...
