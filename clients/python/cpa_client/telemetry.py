"""Tracing and log setup shared by the scheduler and the agent (docs/OBSERVABILITY.md).

Both processes depend on this package, never on each other, so the parts they share live here:
the OpenTelemetry tracer provider (OTLP export, ratio sampling), the W3C carrier helpers for a
context that crosses a queue in a map field, and the structlog configuration that renders every
`logging` call as one JSON object per line (or for a person, on a terminal), PII redacted by the
policy's detectors (cpa_client.pii) in every process alike.

OpenTelemetry, structlog and google-re2 are imported on use only: the SDK's callers that use
none of this pay nothing for them (the extra `cpa-client[logs]` installs what logging needs).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACEPARENT = "traceparent"


def tracer_provider(
    *,
    service_name: str,
    endpoint: str,
    protocol: str = "grpc",
    exporter: SpanExporter | None = None,
    attributes: Mapping[str, str] | None = None,
) -> TracerProvider:
    """A provider that exports in batches over OTLP to `endpoint` ("grpc": host:port or
    http://host:4317; "http": http://host:4318/v1/traces), plus to `exporter` when given.

    It keeps every root span it is asked for and follows its parents' decisions (ParentBased):
    its users sample new traces before they start a span, which costs an unsampled call
    nothing of the instrumentation's work."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, **(attributes or {})}),
        sampler=ParentBased(ALWAYS_ON),
    )
    if endpoint:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint, protocol)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _otlp_exporter(endpoint: str, protocol: str) -> SpanExporter:
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # A collector beside the process is reached in plaintext; an https:// endpoint uses TLS.
    return OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))


def inject_current() -> dict[str, str]:
    """The current span's W3C context (traceparent, tracestate) as a map; empty outside a
    sampled span."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> Context:
    """The context a W3C map names (a remote parent for the spans started under it)."""
    from opentelemetry import propagate

    return propagate.extract(carrier)


@contextmanager
def span_under(
    tracer_name: str, carrier: Mapping[str, str], name: str, **attributes: Any
) -> Iterator[Any]:
    """A span named `name` whose parent is the context in `carrier` (its own root if empty)."""
    from opentelemetry import trace

    tracer = trace.get_tracer(tracer_name)
    context = extract(carrier) if carrier else None
    with tracer.start_as_current_span(name, context=context, attributes=attributes) as span:
        yield span


def trace_id_of(carrier: Mapping[str, str]) -> str:
    """The trace id (32 hex digits) a traceparent names; empty when there is none."""
    parts = carrier.get(TRACEPARENT, "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def sampled(traceparent: str) -> bool:
    """Whether a traceparent's flags say sampled (bit 0; others, such as the random trace id
    flag, may be set too). A malformed one: not sampled."""
    try:
        return bool(int(traceparent.rsplit("-", 1)[1][:2], 16) & 1)
    except (IndexError, ValueError):
        return False


def _trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The current span's ids on the line (a bound trace_id, from a stored context, stays when
    no span is current)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


def configure_logging(
    level: str,
    *,
    json_lines: bool | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Route every `logging` record through structlog: one JSON object per line (a terminal
    gets the console format unless `json_lines`), with the contextvars bound by
    `structlog.contextvars` (tenant, job_id, task_id, attempt), the current trace and span ids,
    and every value passed through `redact_pii`, exceptions included."""
    import structlog

    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _trace_ids,
    ]
    final: list[Any] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        # A traceback as text before redaction, on a terminal too: the console renderer's own
        # (rich) traceback would show the exception's message and local variables unredacted.
        structlog.processors.format_exc_info,
        redact_pii,
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=stream.isatty()),
    ]
    handler = logging.StreamHandler(stream) if stream is not sys.stderr else _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


# Set by the processors above from our own data (never a caller's): not scanned.
_NOT_SCANNED = frozenset({"timestamp", "level", "logger", "trace_id", "span_id"})
_PLAIN = (int, float, bool, type(None))


def redact_pii(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The structlog processor of every process's log lines: each value, nested ones in dicts,
    lists and tuples too, with every PII finding of every detector replaced by its label
    ([REDACTED:IBAN]; cpa_client.pii, the policy's rules). Any other object is rendered as its
    repr (as the JSON renderer would) and redacted."""
    from .pii import redact_all

    def redacted(value: Any) -> Any:
        if isinstance(value, str):
            return redact_all(value)
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, dict):
            return {key: redacted(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [redacted(item) for item in value]
        return redact_all(repr(value))

    for key, value in event.items():
        if key not in _NOT_SCANNED:
            event[key] = redacted(value)
    return event


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to `sys.stderr` as it is when a record is emitted, not when logging was set up: a
    process that swaps it (a test capturing output, a command run in process) keeps its lines
    instead of writing to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass  # always the current sys.stderr
