"""`cpa audit` as a process, and GET /v1/audit through a real Envoy (`cpa gateway`) in front of
`cpa serve`: a job's submission and its task outcome, and a refused cancel, are listed with
their principal, action and result; filters, bad times and another tenant behave as documented
(docs/AUDIT.md)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import httpx

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient

from .conftest import CONNECTED, START_TIMEOUT_S, CliProcess, StartCli, start_gateway, start_server

WAIT_S = 30.0


def _output(process: CliProcess) -> tuple[int, list[str]]:
    lines = process.rest_of_output(WAIT_S)
    return process.exit_code(WAIT_S), lines


async def _run_job_and_a_refusal(address: str) -> str:
    noop = todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="noop")
    async with SchedulerClient(address, timeout_s=WAIT_S) as client:
        spec = job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[noop]))
        job_id = (await client.schedule_job(spec)).job.job_id
        async for _ in client.watch_job(job_id):
            pass  # the watch ends after the terminal event
        try:
            await client.cancel_job("no-such-job")
        except CpaError:
            pass
        else:
            raise AssertionError("cancelling an unknown job succeeded")
    return job_id


def test_cpa_audit_lists_filters_and_refuses_bad_times(start_cli: StartCli) -> None:
    server, address = start_server(
        start_cli,
        *("--with-agent", "--agent-id", "audit-agent"),
        env={"CPA_AGENT_EXECUTORS": "builtin"},
    )
    server.wait_for_line(CONNECTED, START_TIMEOUT_S)
    job_id = asyncio.run(_run_job_and_a_refusal(address))

    code, lines = _output(start_cli("audit", "--job", job_id, "--server", address))
    assert code == 0
    assert lines[0].split()[:3] == ["TIME", "PRINCIPAL", "ACTION"]
    # Newest first: the agent's outcome (its attempt), then the submission.
    outcome, submission = lines[1:]
    assert re.search(rf"agent:audit-agent +TaskResult +{job_id}/a#1 +OK ", outcome), outcome
    assert re.search(rf"local +ScheduleJob +{job_id} +OK ", submission), submission

    code, lines = _output(
        start_cli("audit", "--action", "CancelJob", "--since", "1h", "--json", "--server", address)
    )
    assert code == 0
    [refusal] = json.loads("\n".join(lines))["entries"]
    assert (refusal["job_id"], refusal["result_code"], refusal["result_reason"]) == (
        "no-such-job",
        "NOT_FOUND",
        "JOB_NOT_FOUND",
    )

    code, lines = _output(start_cli("audit", "--until", "1h", "--server", address))
    assert (code, lines) == (0, ["no audit entries"])

    refused = start_cli("audit", "--since", "yesterday", "--server", address)
    code, _ = _output(refused)
    assert code == 2
    assert "--since 'yesterday' is neither an RFC 3339 time nor an age" in refused.report()


def test_get_v1_audit_through_envoy(start_cli: StartCli) -> None:
    _server, upstream = start_server(start_cli)
    _gateway, match = start_gateway(start_cli, upstream)
    with httpx.Client(base_url=f"http://{match['address']}", timeout=10.0, trust_env=False) as http:
        todo = {"id": "a", "action": "ACTION_TYPE_CUSTOM", "custom_action": "noop"}
        created = http.post(
            "/v1/jobs",
            json={"request_id": str(uuid.uuid4()), "spec": {"todos": {"todos": [todo]}}},
            headers={"x-cpa-tenant": "acme"},
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["job"]["job_id"]

        listed = http.get(
            "/v1/audit",
            params={"job_id": job_id, "action": "ScheduleJob"},
            headers={"x-cpa-tenant": "acme"},
        )
        assert listed.status_code == 200, listed.text
        [entry] = listed.json()["entries"]
        assert (entry["tenant"], entry["principal"], entry["result_code"]) == (
            "acme",
            "local",
            "OK",
        )
        assert entry["request_id"]  # Envoy's x-request-id, or the body's request_id

        # Another tenant sees nothing of it.
        other = http.get("/v1/audit", params={"job_id": job_id}, headers={"x-cpa-tenant": "b"})
        assert other.status_code == 200, other.text
        assert other.json().get("entries", []) == []

        # A time range that cannot match: 400 with the reason and the field.
        bad = http.get(
            "/v1/audit",
            params={"start_time": "2030-01-02T00:00:00Z", "end_time": "2030-01-01T00:00:00Z"},
        )
        assert bad.status_code == 400, bad.text
        status = bad.json()
        reasons = [d.get("reason") for d in status["details"]]
        assert "INVALID_TIME_RANGE" in reasons
        violations = [v["field"] for d in status["details"] for v in d.get("field_violations", [])]
        assert violations == ["end_time"]
