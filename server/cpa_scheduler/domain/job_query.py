"""JobQuery: which jobs a list asks for (filter, order, page position), independent of storage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .states import JobState


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Conditions ANDed together; an empty filter matches every job of the tenant.

    `states` is a set of alternatives (any one matches). Both time bounds are exclusive
    (`created_after < create_time < created_before`): timestamps have microsecond resolution,
    so an inclusive `>=`/`<=` in a filter becomes an exclusive bound one microsecond further out
    and storage needs only `>` and `<`.
    """

    states: frozenset[JobState] = frozenset()
    intent: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    created_after: datetime | None = None
    created_before: datetime | None = None
    dead_lettered: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PagePosition:
    """Where the next page starts: after this (create_time, job_id) in newest-first order."""

    create_time: datetime
    job_id: str
