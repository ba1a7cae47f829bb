"""The JSON logs of a job's run (docs/OBSERVABILITY.md, "Logs"): `cpa serve --with-agent` with
tracing on runs a job a traced caller submits; every line of its log is a JSON object, and each
that concerns the job, the scheduler's and the agent's alike, names the job and its trace."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cpa_client import SchedulerClient
from tests.cli.conftest import CONNECTED, START_TIMEOUT_S, StartCli, start_server
from tests.e2e.conftest import finished
from tests.fixtures.otlp import schedule_traced

LOG_ENV = {
    "CPA_LOG_LEVEL": "DEBUG",
    "CPA_LOG_FORMAT": "json",
    # Spans made (their ids on the lines), none exported: no endpoint.
    "CPA_TRACING_ENABLED": "true",
}


async def test_every_line_of_a_jobs_run_carries_its_job_and_trace(start_cli: StartCli) -> None:
    server, address = start_server(start_cli, "--with-agent", "--agent-id", "local", env=LOG_ENV)
    server.wait_for_line(CONNECTED, START_TIMEOUT_S)
    job_id, trace_id, _ = await schedule_traced(address, InMemorySpanExporter())
    async with SchedulerClient(address, timeout_s=START_TIMEOUT_S) as client:
        await finished(client, job_id)
    server.popen.kill()  # no stop notice on stderr: every line there is a log record
    server.popen.wait(timeout=START_TIMEOUT_S)

    records = [json.loads(line) for line in server.stderr().splitlines()]
    assert all({"event", "level", "logger", "timestamp"} <= r.keys() for r in records)
    concerning = [r for r in records if job_id in json.dumps(r)]
    loggers = {r["logger"].split(".")[0] for r in concerning}
    assert loggers == {"cpa_scheduler", "cpa_agent"}, concerning
    # Created, assigned to the agent, run there, its result applied.
    assert len(concerning) >= 4, concerning
    for record in concerning:
        assert (record.get("job_id"), record.get("trace_id")) == (job_id, trace_id), record
    on_agent = [r for r in concerning if r["logger"].startswith("cpa_agent")]
    assert all(
        (r["tenant"], r["task_id"], r["attempt"]) == ("default", "step", 1) for r in on_agent
    )
    assert all(len(r.get("span_id", "")) == 16 for r in on_agent)
