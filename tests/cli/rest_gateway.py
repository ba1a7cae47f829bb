"""Shared by the REST tests through a real Envoy (`cpa gateway` in front of `cpa serve`): starting
the gateway, building job requests, reading Server-Sent Events, and checking JSON
google.rpc.Status answers. The stack fixture itself is `rest_stack` in conftest.py."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from cpa_client.errors import ERROR_DOMAIN as DOMAIN

from . import conftest
from .conftest import CliProcess, StartCli

JOB_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
UNKNOWN_JOB = "0123456789abcdef0123456789abcdef"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True)
class RestStack:
    """A scheduler (with a local agent) and the gateway in front of it."""

    server: CliProcess
    gateway: CliProcess
    upstream: str  # the scheduler's HOST:PORT
    address: str  # the gateway's HOST:PORT
    admin: str
    agent_id: str

    def http(self, timeout_s: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=f"http://{self.address}", timeout=timeout_s, trust_env=False)


def start_gateway(
    start_cli: StartCli, upstream: str, env: dict[str, str] | None = None
) -> tuple[CliProcess, str, str]:
    """`cpa gateway` in front of `upstream`; (process, its address, its admin address)."""
    gateway, match = conftest.start_gateway(start_cli, upstream, env=env or {})
    assert match["upstreams"] == upstream
    return gateway, match["address"], match["admin"]


def rpc_status(
    response: httpx.Response, http_status: int, code: int, reason: str, field: str | None = None
) -> dict[str, Any]:
    """Asserts a JSON google.rpc.Status answer: HTTP status, gRPC code, the ErrorInfo reason in
    our domain and, when given, the field it names (ErrorInfo metadata, and BadRequest under
    INVALID_ARGUMENT). Returns the Status."""
    assert response.status_code == http_status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.text
    status: dict[str, Any] = response.json()
    assert status["code"] == code, status
    assert status["message"], status
    infos = [d for d in status.get("details", []) if d["@type"] == ERROR_INFO]
    assert [(i["reason"], i["domain"]) for i in infos] == [(reason, DOMAIN)], status
    if field is not None:
        assert infos[0].get("metadata", {}).get("field") == field, status
        if code == 3:
            (bad,) = [d for d in status["details"] if d["@type"] == BAD_REQUEST]
            assert [v["field"] for v in bad["field_violations"]] == [field], status
    return status


def gateway_refusal(response: httpx.Response, http_status: int, code: int, reason: str) -> str:
    """Asserts a refusal made by Envoy itself: a JSON Status whose only detail is our ErrorInfo
    (no metadata: Envoy knows no field); returns its message (Envoy's own words)."""
    status = rpc_status(response, http_status, code, reason)
    assert status["details"] == [{"@type": ERROR_INFO, "reason": reason, "domain": DOMAIN}]
    message: str = status["message"]
    return message


def todo(task_id: str, action: str = "echo", **params: Any) -> dict[str, Any]:
    """A ToDo of a built-in custom action, in proto3 JSON."""
    return {
        "id": task_id,
        "action": "ACTION_TYPE_CUSTOM",
        "custom_action": action,
        "params": params,
    }


def todos_job(label: str, *todos: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    """A ScheduleJobRequest body with explicit ToDos and the label `run`."""
    return {
        "request_id": str(uuid.uuid4()) if request_id is None else request_id,
        "spec": {
            "todos": {"todos": list(todos) or [todo("greet", greeting="over REST")]},
            "labels": {"run": label},
        },
    }


def echo_job(label: str) -> dict[str, Any]:
    return todos_job(label)


def new_label(what: str) -> str:
    """A label value with spaces (filters must carry them) unique to one test."""
    return f"{what} {uuid.uuid4().hex[:8]}"


def labelled(http: httpx.Client, label: str, **params: str) -> list[dict[str, Any]]:
    """Every job with label `run` = `label`, through ListJobs."""
    listed = http.get("/v1/jobs", params={"filter": f'labels.run = "{label}"', **params})
    assert listed.status_code == 200, listed.text
    jobs: list[dict[str, Any]] = listed.json()["jobs"]
    return jobs


def watch_sse(
    http: httpx.Client, job_id: str, after_sequence: int = 0
) -> tuple[list[dict[str, Any]], datetime]:
    """GET /v1/jobs/{id}:watch as text/event-stream: the JobEvents of its `data:` lines, read
    until the gateway ends the response (the read timeout bounds a stream that never ends),
    and when the first one arrived."""
    params = {"after_sequence": str(after_sequence)} if after_sequence else {}
    events: list[dict[str, Any]] = []
    first_at = datetime.max.replace(tzinfo=UTC)
    with http.stream("GET", f"/v1/jobs/{job_id}:watch", params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                first_at = min(first_at, datetime.now(UTC))
                events.append(json.loads(line.removeprefix("data:"))["event"])
            else:
                assert not line.strip(), line  # SSE: `data:` lines and blank separators only
    return events, first_at


def wait_done(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job once it ended: its SSE watch ends after the terminal event; then GetJob."""
    events, _ = watch_sse(http, job_id)
    assert events, job_id
    assert events[-1]["terminal"], events
    got = http.get(f"/v1/jobs/{job_id}")
    assert got.status_code == 200, got.text
    job: dict[str, Any] = got.json()["job"]
    return job
