"""Metrics seen by a real Prometheus: it scrapes a replica's and an agent's /metrics while jobs
run, and its queries return what those jobs produced (issue 17: "queries for each seed metric
return the values the test's jobs produced").

The replica's counters are process-wide (ADR 0003), so each expectation is the value read from
/metrics before the jobs plus what the jobs add."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cpa.scheduler.v1 import job_pb2 as S  # noqa: N812 - short alias for enum-heavy asserts
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.settings import Settings
from cpa_scheduler.telemetry import timed
from tests.deploy.promql import SYNTHETIC, alert_expressions, dashboard_expressions, metric_names

from .conftest import Agents, Scheduler, finished, todo, todos_spec
from .prometheus import prometheus

SLOTS = 3
SCHEDULE_JOB = "/cpa.scheduler.v1.SchedulerService/ScheduleJob"
GET_JOB = "/cpa.scheduler.v1.SchedulerService/GetJob"


@pytest.fixture
def scheduler_settings(scheduler_settings: Settings) -> Settings:
    """The e2e settings, with this replica's /metrics on a free loopback port."""
    return scheduler_settings.model_copy(
        update={"metrics_address": "127.0.0.1:0", "metrics_queue_interval_s": 0.1}
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
        return text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of sample `name` with exactly `labels` in a /metrics text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def selector(name: str, **labels: str) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


async def test_prometheus_scrapes_what_the_jobs_did(
    scheduler: Scheduler, client: SchedulerClient, agents: Agents, tmp_path: Path
) -> None:
    replica_port = scheduler.server.metrics.port if scheduler.server.metrics else 0
    agent = await agents.start("metrics-agent", slots=SLOTS, metrics_address="127.0.0.1:0")
    assert agent.metrics_port is not None
    before = scrape(replica_port)
    expected: dict[str, float] = {}

    def expect(added: float, name: str, **labels: str) -> None:
        expected[selector(name, **labels)] = sample(before, name, **labels) + added

    with prometheus(
        tmp_path,
        {"scheduler": f"127.0.0.1:{replica_port}", "agent": f"127.0.0.1:{agent.metrics_port}"},
    ) as prom:
        ok = [
            await client.schedule_job(
                todos_spec(todo("a", "echo"), todo("b", "echo", depends_on=["a"]))
            )
            for _ in range(2)
        ]
        failing = await client.schedule_job(
            todos_spec(todo("f", "fail", params={"code": "PORTAL_DOWN", "retryable": False}))
        )
        # No agent serves it: it waits QUEUED, counted in its requirement's queue length.
        waiting = await client.schedule_job(todos_spec(todo("w", "nobody_serves_this")))
        for job in ok:
            assert (await finished(client, job.job.job_id)).state == S.JOB_STATE_SUCCEEDED
        assert (await finished(client, failing.job.job_id)).state == S.JOB_STATE_FAILED
        with pytest.raises(CpaError) as refused:
            await client.get_job("no-such-job")
        assert refused.value.code == grpc.StatusCode.NOT_FOUND
        # An LLM call as a capability reports it (telemetry.hooks): its duration is observed.
        with timed("llm_call", "generate", provider="openai", model="test-model") as call:
            call.counts["prompt_tokens"] = 7

        expect(2, "jobs_total", state="SUCCEEDED")
        expect(1, "jobs_total", state="FAILED")
        expect(4, "jobs_total", state="PENDING")
        expect(1, "job_failures_total", reason="EXECUTOR_ERROR")
        expect(1, "dead_letters_total")
        expect(4, "tasks_total", action="echo", state="SUCCEEDED")
        expect(1, "tasks_total", action="fail", state="FAILED")
        expect(1, "tasks_total", action="nobody_serves_this", state="QUEUED")
        expect(4, "task_duration_seconds_count", action="echo")
        expect(1, "task_duration_seconds_count", action="fail")
        expect(1, "task_failures_total", action="fail", reason="EXECUTOR_ERROR")
        expect(5, "dispatch_latency_seconds_count")
        # The store's count (this test's own store): exact.
        expected[selector("job_queue_length", requirement="nobody_serves_this")] = 1
        expected[selector("job_queue_length", requirement="echo")] = 0
        expect(4, "rpc_requests_total", method=SCHEDULE_JOB, code="OK")
        expect(4, "rpc_duration_seconds_count", method=SCHEDULE_JOB)
        expect(1, "rpc_requests_total", method=GET_JOB, code="NOT_FOUND")
        labels = {"operation": "generate", "provider": "openai", "model": "test-model"}
        expect(1, "llm_call_duration_seconds_count", **labels, outcome="ok")
        expect(7, "llm_tokens_total", provider="openai", model="test-model", kind="prompt_tokens")
        expected[selector("agents_connected")] = 1
        expect(0, "agents_serving", action="nobody_serves_this")
        expected[selector("agents_serving", action="echo")] = 1
        expected[selector("agent_free_slots", action="echo")] = SLOTS
        expected[selector("agent_free_slots_total")] = SLOTS
        # The agent's own registry: exact values.
        expected[selector("agent_attempts_total", action="echo", outcome="succeeded")] = 4
        expected[selector("agent_attempts_total", action="fail", outcome="failed")] = 1
        expected[selector("agent_attempt_duration_seconds_count", action="echo")] = 4
        expected[selector("agent_slots")] = SLOTS
        expected[selector("agent_running_attempts")] = 0
        expected[selector("agent_up")] = 1

        wrong = []
        for promql, value in expected.items():
            # A series absent from both (a 0 expectation) reads as 0, not "no data".
            try:
                await prom.wait_for(f"sum({promql}) or vector(0)", value, timeout_s=10)
            except AssertionError as error:
                wrong.append(str(error))
        assert not wrong, "\n".join(wrong)
        # Store transactions were timed: at least one per job created and per report.
        await prom.wait_for(
            "sum(store_transaction_seconds_count) >= bool "
            f"{sample(before, 'store_transaction_seconds_count', operation='update_job') + 5}",
            1,
        )
        assert waiting.job.job_id


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics text can have, from its families (with or without samples)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
        }.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


async def test_the_dashboard_and_alerts_read_only_exported_metrics(
    scheduler: Scheduler, agents: Agents
) -> None:
    assert scheduler.server.metrics is not None
    agent = await agents.start("names-agent", metrics_address="127.0.0.1:0")
    assert agent.metrics_port is not None
    exported = exported_names(scrape(scheduler.server.metrics.port))
    exported |= exported_names(scrape(agent.metrics_port))
    expressions = {**dashboard_expressions(), **alert_expressions()}
    unknown = {
        where: sorted(metric_names(expr) - exported - SYNTHETIC)
        for where, expr in expressions.items()
        if metric_names(expr) - exported - SYNTHETIC
    }
    assert unknown == {}
    # The check has teeth: a misspelt name is reported.
    assert metric_names("sum(job_queue_lenght)") - exported == {"job_queue_lenght"}
