"""Timed operations reported through telemetry/hooks (LLM calls, memory queries) become spans
under the caller's, with their outcome, labels and counts; none outside a trace or when off."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cpa_client import telemetry as shared
from cpa_scheduler.telemetry import hooks, tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    tracing.install(shared.tracer_provider(service_name="test", endpoint="", exporter=memory))
    try:
        yield memory
    finally:
        tracing.uninstall()


def test_an_llm_call_is_a_child_span_with_its_outcome_and_counts(
    spans: InMemorySpanExporter,
) -> None:
    provider = tracing.provider()
    assert provider is not None
    with provider.get_tracer("test").start_as_current_span("request") as parent:
        with hooks.timed("llm_call", "generate", provider="openai") as timing:
            timing.counts["prompt_tokens"] = 12
        with pytest.raises(TimeoutError), hooks.timed("llm_call", "embed"):
            raise TimeoutError

    generate, embed, request = spans.get_finished_spans()
    assert (generate.name, embed.name, request.name) == (
        "llm_call.generate",
        "llm_call.embed",
        "request",
    )
    assert generate.parent is not None
    assert generate.parent.span_id == parent.get_span_context().span_id
    assert dict(generate.attributes or {}) == {
        "cpa.outcome": "ok",
        "cpa.provider": "openai",
        "cpa.prompt_tokens": 12,
    }
    assert (embed.attributes or {})["cpa.outcome"] == "TimeoutError"
    assert generate.end_time is not None
    assert generate.start_time is not None
    assert generate.start_time <= generate.end_time


def test_outside_a_trace_or_with_tracing_off_no_span_is_made(spans: InMemorySpanExporter) -> None:
    with hooks.timed("memory_query", "search"):
        pass
    tracing.uninstall()
    with hooks.timed("memory_query", "search"):
        pass
    assert spans.get_finished_spans() == ()
    assert tracing.current_carrier() == {}


class _Queue:
    def __init__(self) -> None:
        self.on_ready: Callable[[], None] = lambda: None

    async def publish(self) -> None:
        self.on_ready()


async def test_a_traced_object_gets_what_is_set_on_its_proxy(
    spans: InMemorySpanExporter,
) -> None:
    queue = _Queue()
    proxy = tracing.traced(queue, "queue")
    woken: list[bool] = []
    proxy.on_ready = lambda: woken.append(True)  # as the dispatcher sets its wake-up

    await proxy.publish()

    assert woken == [True]
    assert "publish" not in vars(queue)  # the proxy's wrapped method stays the proxy's
