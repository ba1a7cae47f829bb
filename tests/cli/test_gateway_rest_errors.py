"""Errors over REST/JSON through a real Envoy: every answer that is not a success is a JSON
google.rpc.Status with our ErrorInfo, at the HTTP status of its gRPC code, whether the scheduler
or the gateway refused it: wrong method (405), conflicts (409), limits (429, 400/413), no
scheduler behind the gateway (503). Large answers pass whole.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack

import grpc
import httpx
import pytest

from cpa.scheduler.v1 import scheduler_service_pb2 as svc
from cpa.scheduler.v1 import scheduler_service_pb2_grpc

from .conftest import REST_STACK_ENV, StartCli, start_server
from .rest_gateway import (
    STOP_TIMEOUT_S,
    UNKNOWN_JOB,
    RestStack,
    gateway_refusal,
    labelled,
    new_label,
    rpc_status,
    start_gateway,
    todo,
    todos_job,
    wait_done,
)

REQUEST_LIMIT = int(REST_STACK_ENV["CPA_MAX_REQUEST_BYTES"])


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/jobs", "GET, POST"),
        ("DELETE", "/v1/jobs", "GET, POST"),
        ("DELETE", f"/v1/jobs/{UNKNOWN_JOB}:cancel", "POST"),
        ("POST", f"/v1/jobs/{UNKNOWN_JOB}", "GET"),
        ("GET", f"/jobs/{UNKNOWN_JOB}", "DELETE"),
        ("GET", "/v1/jobs:batchSchedule", "POST"),
        ("PATCH", "/lam/message", "POST"),
        ("GET", "/v1/lam/messages", "POST"),
        ("POST", "/v1/agents", "GET"),
    ],
)
def test_a_bound_path_with_another_method_is_405_with_allow(
    rest_stack: RestStack, method: str, path: str, allow: str
) -> None:
    with rest_stack.http() as http:
        response = http.request(method, path, json={})
        message = gateway_refusal(response, 405, 12, "METHOD_NOT_ALLOWED")
        assert response.headers["allow"] == allow
        assert message.endswith(f"takes {allow}")
        # The methods it allows still reach the scheduler (its own answer: no such job).
        allowed = http.request(allow.split(", ")[0], path, json={})
        assert allowed.status_code != 405, allowed.text


def test_unknown_paths_stay_404(rest_stack: RestStack) -> None:
    with rest_stack.http() as http:
        for method, path in (("GET", "/v1/nope"), ("PUT", "/v1/jobs/x/y"), ("POST", "/v2/jobs")):
            response = http.request(method, path, json={})
            assert "Could not resolve" in gateway_refusal(response, 404, 5, "UNKNOWN_METHOD")


def test_conflicts_and_limits_are_json_statuses(rest_stack: RestStack) -> None:
    label = new_label("limits")
    with rest_stack.http() as http:
        # ALREADY_EXISTS is 409: a request id reused for another request.
        request_id = str(uuid.uuid4())
        first = http.post(
            "/v1/jobs", json=todos_job(label, todo("a", "noop"), request_id=request_id)
        )
        assert first.status_code == 200, first.text
        other = todos_job(label, todo("b", "noop"), request_id=request_id)
        rpc_status(http.post("/v1/jobs", json=other), 409, 6, "REQUEST_ID_REUSED", "request_id")

        # A JSON body under the gateway's limit whose protobuf is over the scheduler's (a JSON
        # `0,` is 11 bytes as a Value in a list) and over what gRPC's transport took before:
        # the scheduler's own 400 PAYLOAD_TOO_LARGE, not RESOURCE_EXHAUSTED (429, retried).
        zeros = todos_job(label, todo("z", "noop", n=[0] * 125_000))
        body = json.dumps(zeros, separators=(",", ":")).encode()
        assert len(body) < REQUEST_LIMIT < 11 * 125_000 - 1024 * 1024
        expanded = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        status = rpc_status(expanded, 400, 3, "PAYLOAD_TOO_LARGE")
        assert f"the limit is {REQUEST_LIMIT}" in status["message"]
        # Over the gateway's own limit: 413 from Envoy, the same reason.
        big = todos_job(label, todo("big", "noop", blob="x" * REQUEST_LIMIT))
        gateway_refusal(http.post("/v1/jobs", json=big), 413, 3, "PAYLOAD_TOO_LARGE")
        # Headers over Envoy's 60 KiB (a huge Idempotency-Key): 431 from its HTTP codec, JSON.
        huge_key = {"Idempotency-Key": "k" * 70_000}
        headers = http.post("/v1/jobs", json=todos_job(label), headers=huge_key)
        gateway_refusal(headers, 431, 3, "PAYLOAD_TOO_LARGE")
        assert len(labelled(http, label)) == 1

        # RESOURCE_EXHAUSTED is 429: more watchers than the tenant may hold open (2 here).
        tenant = {"x-cpa-tenant": f"watchers-{uuid.uuid4().hex[:8]}"}
        waiting = todos_job(label, todo("w", "wait", seconds=30))
        job_id = http.post("/v1/jobs", json=waiting, headers=tenant).json()["job"]["job_id"]
        with ExitStack() as streams:
            for _ in range(2):
                watch = streams.enter_context(
                    http.stream("GET", f"/v1/jobs/{job_id}:watch", headers=tenant)
                )
                assert watch.status_code == 200
            one_more = http.get(f"/v1/jobs/{job_id}:watch", headers=tenant)
            rpc_status(one_more, 429, 8, "TOO_MANY_WATCHERS")
        cancelled = http.post(f"/v1/jobs/{job_id}:cancel", json={}, headers=tenant)
        assert cancelled.status_code == 200, cancelled.text


def test_a_page_larger_than_envoys_default_buffer_arrives_whole(rest_stack: RestStack) -> None:
    """Envoy's transcoder holds a response whole (1 MiB by default, then 500): the gateway's
    max_response_body_size lets a full ListJobs page of about 1.6 MB through."""
    label = new_label("large")
    blob = "y" * (REQUEST_LIMIT - 64 * 1024)
    with rest_stack.http(timeout_s=30.0) as http:
        ids = []
        for n in range(4):
            created = http.post("/v1/jobs", json=todos_job(label, todo(f"t{n}", blob=blob)))
            assert created.status_code == 200, created.text
            ids.append(created.json()["job"]["job_id"])
        for job_id in ids:
            assert wait_done(http, job_id)["state"] == "JOB_STATE_SUCCEEDED"
        page = http.get(
            "/v1/jobs", params={"filter": f'labels.run = "{label}"', "view": "JOB_VIEW_FULL"}
        )
        assert page.status_code == 200, page.text[:500]
        assert len(page.content) > 2 * 4 * len(blob) > 1024 * 1024  # params and outputs
        jobs = page.json()["jobs"]
        assert sorted(j["job_id"] for j in jobs) == sorted(ids)
        assert all(j["tasks"][0]["outputs"] == {"blob": blob} for j in jobs)


def test_no_scheduler_behind_the_gateway_is_a_json_503(start_cli: StartCli) -> None:
    """The scheduler stops behind a running gateway: REST calls get UNAVAILABLE as a JSON
    Status (SERVER_SHUTTING_DOWN) instead of Envoy's plain text, native gRPC its usual
    trailers-only UNAVAILABLE."""
    server, upstream = start_server(start_cli)
    gateway, address, _ = start_gateway(start_cli, upstream)
    with httpx.Client(base_url=f"http://{address}", timeout=10.0, trust_env=False) as http:
        assert http.get("/v1/agents").status_code == 200
        server.terminate()
        assert server.exit_code(STOP_TIMEOUT_S) == 0, server.report()
        # Until the health check notices, a call may still find a closing connection; then
        # every call is refused by the gateway itself.
        deadline = time.monotonic() + 15.0
        while (response := http.get(f"/v1/jobs/{UNKNOWN_JOB}")).status_code != 503:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.05)  # poll interval of a wait with a deadline
        status = rpc_status(response, 503, 14, "SERVER_SHUTTING_DOWN")
        assert status["message"]  # Envoy's words: "no healthy upstream" or a connect error
        posted = http.post("/v1/jobs", json=todos_job("none"))
        rpc_status(posted, 503, 14, "SERVER_SHUTTING_DOWN")

    with grpc.insecure_channel(address) as channel:
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetJob(svc.GetJobRequest(job_id=UNKNOWN_JOB), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not (caught.value.details() or "").startswith("{")  # gRPC's own form, not JSON
    gateway.terminate()
    assert gateway.exit_code(STOP_TIMEOUT_S) == 0, gateway.report()
