"""Structured logs of the scheduler (docs/OBSERVABILITY.md, "Logs").

Every `logging` call is rendered by structlog (cpa_client.telemetry.configure_logging): JSON
lines with the level, logger, time, the trace and span ids of the current span, and what
`job_context` bound where a job or task is handled (tenant, job_id, task_id, attempt, and the
job's trace id even outside a span). Values pass through the policy's PII detectors
(cpa_client.pii, every detector on: a log line has no tenant policy to allow anything), in the
one processor the agent's and the CLI's lines pass through too (cpa_client.telemetry.redact_pii).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import structlog

from cpa_client import telemetry as shared

from ..settings import Settings


def configure(settings: Settings) -> None:
    """Logs as settings.log_format and settings.log_level say, for the whole process."""
    shared.configure_logging(
        settings.log_level,
        json_lines=None if settings.log_format == "auto" else settings.log_format == "json",
    )


@contextmanager
def job_context(
    tenant: str,
    job_id: str,
    *,
    task_id: str = "",
    attempt: int = 0,
    trace_context: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """Lines logged inside name the job (and task, attempt, and its trace when it has one)."""
    fields: dict[str, object] = {"tenant": tenant, "job_id": job_id}
    if task_id:
        fields["task_id"] = task_id
    if attempt:
        fields["attempt"] = attempt
    if trace_context and (trace_id := shared.trace_id_of(trace_context)):
        fields["trace_id"] = trace_id
    with structlog.contextvars.bound_contextvars(**fields):
        yield
