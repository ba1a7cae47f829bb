"""Tracing and log context of the agent's attempts (docs/OBSERVABILITY.md).

Off by default (CPA_AGENT_TRACING_ENABLED): then `attempt_span` is a null context. On, each
attempt runs in a span "cpa.attempt" whose parent is the job's trace context the Assignment
carries, so the attempt joins the trace of the call that submitted the job, whichever replica
assigned it and however long after. Log lines inside name the job, task and attempt; every
line's PII is redacted as on the scheduler (`configure_logging`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_client import telemetry as shared

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from cpa_agent.settings import AgentSettings

TRACER_NAME = "cpa_agent"

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
# Share of attempts traced whose assignment carries no context (a job submitted untraced):
# each starts a trace of its own. Decided before any span is made, as on the scheduler.
_ratio = 1.0


def install(provider: TracerProvider, *, sampling_ratio: float = 1.0) -> None:
    """Trace this process's attempts with `provider` (tests give an in-memory exporter)."""
    global _provider, _tracer, _ratio
    _provider, _tracer, _ratio = provider, provider.get_tracer(TRACER_NAME), sampling_ratio


def uninstall() -> None:
    global _provider, _tracer
    if _provider is not None:
        _provider.force_flush()
    _provider = _tracer = None


def from_settings(settings: AgentSettings, *, service_name: str = "cpa-agent") -> None:
    """Turn tracing on as the settings say (once per process)."""
    if settings.tracing_enabled and _provider is None:
        install(
            shared.tracer_provider(
                service_name=service_name,
                endpoint=settings.tracing_endpoint,
                protocol=settings.tracing_protocol,
                attributes={"service.instance.id": settings.agent_id},
            ),
            sampling_ratio=settings.tracing_sampling_ratio,
        )


def flush() -> None:
    if _provider is not None:
        _provider.force_flush()


@contextmanager
def attempt_span(assignment: pb.Assignment, action: str) -> Iterator[Any]:
    """Bind the attempt's ids to the log lines inside, and (tracing on) run it in a span under
    the job's trace; yields the span (None when off) for the outcome."""
    fields: dict[str, Any] = {
        "tenant": assignment.tenant,
        "job_id": assignment.job_id,
        "task_id": assignment.todo.id,
        "attempt": assignment.attempt,
    }
    if trace_id := shared.trace_id_of(assignment.trace_context):
        fields["trace_id"] = trace_id
    with structlog.contextvars.bound_contextvars(**fields):
        carrier = assignment.trace_context
        if _tracer is None or not (carrier or _ratio >= 1.0 or random.random() < _ratio):
            yield None
            return
        context = shared.extract(carrier) if carrier else None
        with _tracer.start_as_current_span(
            "cpa.attempt",
            context=context,
            attributes={
                "cpa.job_id": assignment.job_id,
                "cpa.task_id": assignment.todo.id,
                "cpa.action": action,
                "cpa.attempt": assignment.attempt,
            },
        ) as span:
            yield span


def set_outcome(span: Any, result: pb.Result) -> None:
    """The attempt's outcome on its span: succeeded, failed (with the error code), cancelled."""
    if span is None:
        return
    if result.WhichOneof("outcome") == "error":
        outcome = "cancelled" if result.cancelled else "failed"
        span.set_attribute("cpa.error_code", result.error.code)
    else:
        outcome = "succeeded"
    span.set_attribute("cpa.outcome", outcome)


def configure_logging(settings: AgentSettings) -> None:
    """The agent CLI's logs as its settings say (JSON lines unless on a terminal), PII redacted
    by the scheduler's rules (cpa_client.telemetry.redact_pii): an executor's error may quote
    what a portal or a mailbox showed it."""
    shared.configure_logging(
        settings.log_level,
        json_lines=None if settings.log_format == "auto" else settings.log_format == "json",
    )
