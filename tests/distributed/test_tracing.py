"""One trace from the caller to the agent (docs/OBSERVABILITY.md, "Tracing"): the caller's
client span (in-memory exporter, this process) and the spans replicas and the agent export over
OTLP to a real receiver on loopback share one trace id; the job waits in Redis between the
replica that takes the call and the one that assigns the task."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cpa_client import SchedulerClient
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import ONCE, agents_connected, assert_sound_history
from tests.fixtures.otlp import SCHEDULE_JOB, OtlpReceiver, ReceivedSpan, schedule_traced
from tests.fixtures.otlp import otlp_receiver as serve_receiver

TIMEOUT_S = 60.0
# Within the test's own timeout: a span that never comes fails here, naming what did.
SPANS_TIMEOUT_S = 20.0
# The exporters' batches leave at once instead of every 5 s: the test waits for them.
FAST_EXPORT = "50"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async for served in serve_receiver():
        yield served


def _stored_options(cluster: Cluster, job_id: str) -> str:
    with psycopg.connect(cluster.database_url) as connection:
        row = connection.execute("SELECT options_json FROM jobs WHERE job_id = %s", (job_id,))
        (options,) = row.fetchone() or ("",)
    return str(options)


async def _run_one_job(cluster: Cluster, receiver: OtlpReceiver) -> tuple[str, str, str]:
    """Replicas r1 and r2 and a tracing agent on r2 only: r1 takes the traced caller's job and
    queues its task in Redis, r2 takes and assigns it. Returns schedule_traced's ids once the
    job has succeeded."""
    front, back = cluster.replica("r1"), cluster.replica("r2")
    cluster.agent(
        "agent-b",
        back,
        CPA_AGENT_TRACING_ENABLED="true",
        CPA_AGENT_TRACING_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY=FAST_EXPORT,
    )
    async with SchedulerClient(front.target, timeout_s=TIMEOUT_S) as client:
        await agents_connected(client, "agent-b")
        ids = await schedule_traced(front.target, InMemorySpanExporter())
        await assert_sound_history(client, [ids[0]], attempts={"step": ONCE})
    return ids


async def test_one_trace_spans_the_call_the_queue_and_the_agent(
    cluster: Cluster, receiver: OtlpReceiver
) -> None:
    cluster.settings.update(
        CPA_TRACING_ENABLED="true",
        CPA_TRACING_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY=FAST_EXPORT,
    )
    job_id, trace_id, client_span_id = await _run_one_job(cluster, receiver)

    def of_trace(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.trace_id == trace_id]

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {(s.instance, s.name) for s in of_trace(spans)}
        return {("r1", SCHEDULE_JOB), ("r2", "cpa.assign"), ("agent-b", "cpa.attempt")} <= names

    traced = of_trace(await receiver.wait_for(complete, timeout_s=SPANS_TIMEOUT_S))
    by_name = {(s.instance, s.name): s for s in traced}
    # r1: the call continues the caller's span, and stores and queues the job under it.
    call = by_name["r1", SCHEDULE_JOB]
    assert call.parent_span_id == client_span_id
    assert call.service == "cpa-scheduler"
    r1_children = {
        s.name for s in traced if s.instance == "r1" and s.parent_span_id == call.span_id
    }
    assert any(name.startswith("store.") for name in r1_children), r1_children
    assert "queue.publish" in r1_children, r1_children
    # r2: the assignment runs under the stored context, its transaction and ack inside it.
    assign = by_name["r2", "cpa.assign"]
    assert assign.parent_span_id == call.span_id
    assert assign.attributes["cpa.agent_id"] == "agent-b"
    r2_children = {s.name for s in traced if s.parent_span_id == assign.span_id}
    assert any(name.startswith("store.") for name in r2_children), r2_children
    assert "queue.ack" in r2_children, r2_children
    # The agent: the attempt is a child of the submission, with what ran and how it ended.
    attempt = by_name["agent-b", "cpa.attempt"]
    assert attempt.service == "cpa-agent"
    assert attempt.parent_span_id == call.span_id
    assert attempt.attributes == {
        "cpa.job_id": job_id,
        "cpa.task_id": "step",
        "cpa.action": "echo",
        "cpa.attempt": 1,
        "cpa.outcome": "succeeded",
    }
    assert '"traceparent"' in _stored_options(cluster, job_id)


async def test_with_tracing_off_no_context_is_kept_or_sent(
    cluster: Cluster, receiver: OtlpReceiver
) -> None:
    # The agent traces: had its assignment carried a context, its span would join the caller's.
    job_id, trace_id, _ = await _run_one_job(cluster, receiver)

    def attempted(spans: list[ReceivedSpan]) -> bool:
        return any(s.attributes.get("cpa.job_id") == job_id for s in spans)

    spans = await receiver.wait_for(attempted, timeout_s=SPANS_TIMEOUT_S)
    (attempt,) = [s for s in spans if s.attributes.get("cpa.job_id") == job_id]
    assert attempt.trace_id != trace_id
    assert attempt.parent_span_id == ""  # a root: the assignment carried no context
    assert not [s for s in spans if s.service == "cpa-scheduler"]
    assert "trace" not in _stored_options(cluster, job_id)
