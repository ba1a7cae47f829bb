"""Tracing of the scheduler (docs/OBSERVABILITY.md, "Tracing").

Off by default, and then nothing here runs: no interceptor is installed, no backend is wrapped,
`current_carrier()` returns an empty map without touching OpenTelemetry, and jobs keep no
context. On (CPA_TRACING_ENABLED), one tracer provider serves the process:

- every RPC gets a server span (opentelemetry-instrumentation-grpc's aio interceptor), which
  continues the caller's W3C context;
- a submission keeps that context with its job (JobOptions.trace_context, in the job's options
  column) and its queue entries, so the replica that later assigns a task works under it and
  every Assignment carries it (`trace_context`) to the agent;
- the store, the work queue and the callback sender are wrapped: each call is a span
  ("store.<method>", "queue.<method>", "callback.post") under the current one;
- LLM calls and memory queries reported through telemetry/hooks become spans too.
"""

from __future__ import annotations

import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TypeVar, cast

from cpa_client import telemetry as shared

from . import hooks

if TYPE_CHECKING:
    import grpc.aio
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from ..settings import Settings

TRACER_NAME = "cpa_scheduler"
_AGENT_STREAM = "/cpa.executor.v1.ExecutorService/Connect"
T = TypeVar("T")

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_unsubscribe: Callable[[], None] | None = None
# Share of new traces started here (calls without a caller's context, callback deliveries).
# Decided before any span is made, so that an unsampled call costs one random number and not
# the instrumentation's work; the provider's sampler then keeps what was let in (ParentBased).
_ratio = 1.0


def install(provider: TracerProvider, *, sampling_ratio: float = 1.0) -> None:
    """Trace this process with `provider` (tests give one with an in-memory exporter),
    starting `sampling_ratio` of new traces."""
    global _provider, _tracer, _unsubscribe, _ratio
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)
    _ratio = sampling_ratio
    if _unsubscribe is None:
        _unsubscribe = hooks.subscribe(_operation_span)


def uninstall() -> None:
    """Stop tracing (flushing what was made); what was wrapped before keeps its spans off."""
    global _provider, _tracer, _unsubscribe
    if _provider is not None:
        _provider.force_flush()
    if _unsubscribe is not None:
        _unsubscribe()
    _provider = _tracer = _unsubscribe = None


def from_settings(settings: Settings, *, instance: str = "") -> TracerProvider | None:
    """The process's provider when tracing is on (made from the settings at the first call,
    or the one `install` was given); None when off. `instance`: service.instance.id."""
    if not settings.tracing_enabled:
        return None
    if _provider is None:
        install(
            shared.tracer_provider(
                service_name=settings.tracing_service_name,
                endpoint=settings.tracing_endpoint,
                protocol=settings.tracing_protocol,
                attributes={"service.instance.id": instance} if instance else None,
            ),
            sampling_ratio=settings.tracing_sampling_ratio,
        )
    return _provider


def provider() -> TracerProvider | None:
    """The provider in use; None when tracing is off."""
    return _provider


def sampling_ratio() -> float:
    return _ratio


def _starts_trace() -> bool:
    return _ratio >= 1.0 or random.random() < _ratio


def _traced_call(details: Any) -> bool:
    """Whether a call gets a span: a caller's context decides (its sampled flag), else the
    ratio. Never the agents' Connect streams: one lives for hours, and every lease renewal
    and report in it would join that one endless trace (attempts are traced in their jobs')."""
    if details.method == _AGENT_STREAM:
        return False
    for key, value in details.invocation_metadata or ():
        if key == shared.TRACEPARENT:
            return shared.sampled(str(value))
    return _starts_trace()


def enabled() -> bool:
    return _tracer is not None


def flush() -> None:
    if _provider is not None:
        _provider.force_flush()


def server_interceptor() -> grpc.aio.ServerInterceptor[Any, Any]:
    """A span per RPC, continuing the caller's context (install first)."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor

    class Interceptor(OpenTelemetryAioServerInterceptor):
        """The instrumentation's, for streaming handlers written as coroutines too: ours
        answer with `context.write` (api/decoded_service.py), which its stream wrapper (an
        async generator iterating the handler) cannot run; the unary one awaits them."""

        def _intercept_aio_server_stream(self, behavior: Any, details: Any) -> Any:
            if inspect.iscoroutinefunction(behavior):
                return self._intercept_aio_server_unary(behavior, details)  # type: ignore[no-untyped-call]
            return super()._intercept_aio_server_stream(behavior, details)  # type: ignore[no-untyped-call]

    tracer = trace.get_tracer("opentelemetry.instrumentation.grpc", tracer_provider=_provider)
    return cast(
        "grpc.aio.ServerInterceptor[Any, Any]",
        Interceptor(tracer, filter_=_traced_call),  # type: ignore[no-untyped-call]
    )


def current_carrier() -> dict[str, str]:
    """The W3C context of the current span, to keep with a job; empty when tracing is off or
    the span is not sampled."""
    if _tracer is None or not _in_trace():
        # An unsampled call's job keeps nothing: no bytes per job, and no spans later.
        return {}
    return shared.inject_current()


def span_under(carrier: Mapping[str, str], name: str, **attributes: Any) -> Any:
    """A span whose parent is the stored context `carrier`; nothing when tracing is off or the
    carrier is empty (work of a job submitted untraced stays untraced)."""
    if _tracer is None or not carrier:
        return nullcontext()
    return _tracer.start_as_current_span(
        name, context=shared.extract(carrier), attributes=attributes
    )


def _in_trace() -> bool:
    from opentelemetry import trace

    return trace.get_current_span().is_recording()


def traced(target: T, prefix: str, *, root: bool = False, **attributes: Any) -> T:
    """`target` with each of its coroutine methods in a span "<prefix>.<method>" when called
    under a recording span (or always with `root`); `target` itself when tracing is off.
    Background work outside any trace (sweeps, polls) makes no spans."""
    tracer = _tracer
    if tracer is None:
        return target
    return cast(T, _Traced(target, tracer, prefix, root, attributes))


class _Traced:
    """The proxy `traced` returns: methods wrapped once, on first use. Public attributes set on
    it are set on the target (a callback such as the queue's `on_ready` must reach the object
    that calls it: set on the proxy alone, the embedded queue never woke the dispatcher)."""

    def __init__(
        self, target: Any, tracer: Tracer, prefix: str, root: bool, attributes: dict[str, Any]
    ) -> None:
        self._target = target
        self._tracer = tracer
        self._prefix = prefix
        self._root = root
        self._attributes = attributes

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(value):
            return value
        if self._root and name == "close":
            return value  # a shutdown is no trace of its own
        wrapped = self._wrap(f"{self._prefix}.{name}", value)
        object.__setattr__(self, name, wrapped)  # the proxy's own cache, not the target's
        return wrapped

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._target, name, value)

    def _wrap(
        self, span_name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        tracer, root, attributes = self._tracer, self._root, self._attributes

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            if not (_in_trace() or (root and _starts_trace())):
                return await method(*args, **kwargs)
            with tracer.start_as_current_span(span_name, attributes=attributes):
                return await method(*args, **kwargs)

        return call


def _operation_span(operation: hooks.Operation) -> None:
    """An LLM call or memory query reported through hooks, as a span under the caller's (the
    listener runs in its context); made after the fact from its measured duration."""
    tracer = _tracer
    if tracer is None or not _in_trace():
        return
    end_ns = time.time_ns()
    span = tracer.start_span(
        f"{operation.kind}.{operation.name}",
        start_time=end_ns - round(operation.duration_s * 1e9),
        attributes={
            "cpa.outcome": operation.outcome,
            **{f"cpa.{key}": value for key, value in operation.labels.items()},
            **{f"cpa.{key}": value for key, value in operation.counts.items()},
        },
    )
    span.end(end_time=end_ns)
