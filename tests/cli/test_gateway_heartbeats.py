"""WatchJob heartbeats keep a quiet Server-Sent Events watch open through a real Envoy.

The gateway's stream idle timeout is cut to IDLE_TIMEOUT_S, and the job's one task runs
QUIET_TASK_S without reporting anything (`wait` with ignore_cancel sends no progress). With the
scheduler's heartbeat at HEARTBEAT_S the watch outlives the quiet and gets every event; the
negative control turns heartbeats off (CPA_WATCH_HEARTBEAT_S=0) and the same watch is cut by
Envoy's idle timeout: so it is the heartbeat that keeps it open.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from .conftest import CONNECTED, START_TIMEOUT_S, CliProcess, StartCli, start_gateway, start_server

IDLE_TIMEOUT_S = 1.5
HEARTBEAT_S = 0.4
QUIET_TASK_S = 4.0
# Bounds the whole watch: the task's time plus a loaded machine's slack.
WATCH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass
class SseWatch:
    """What a GET /v1/jobs/{id}:watch delivered: each `data:` message with the time it came."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    heartbeats: list[tuple[float, str]] = field(default_factory=list)
    cut: str = ""  # how the response broke off, if it did not end normally


def _start(start_cli: StartCli, heartbeat_s: float) -> tuple[CliProcess, str, str]:
    """`cpa serve --with-agent` with heartbeats every `heartbeat_s` and, in front of it, a
    gateway whose idle timeout is IDLE_TIMEOUT_S; returns the gateway, its address and its
    admin address."""
    heartbeats = {"CPA_WATCH_HEARTBEAT_S": str(heartbeat_s)}
    server, upstream = start_server(
        start_cli, "--with-agent", env={**heartbeats, "CPA_AGENT_EXECUTORS": "builtin"}
    )
    server.wait_for_line(CONNECTED, START_TIMEOUT_S)
    gateway, match = start_gateway(
        start_cli,
        upstream,
        env={**heartbeats, "CPA_GATEWAY_STREAM_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S)},
    )
    return gateway, match["address"], match["admin"]


def _idle_timeouts(admin: str) -> int:
    """Envoy's count of downstream streams it closed for idling (its admin /stats)."""
    stats = httpx.get(
        f"http://{admin}/stats", params={"filter": "downstream_rq_idle_timeout$"}, trust_env=False
    )
    (line,) = [x for x in stats.text.splitlines() if x.startswith("http.cpa_gateway.")]
    return int(line.rsplit(":", 1)[1])


def _watch_quiet_job(address: str) -> SseWatch:
    """Submits a job whose task is quiet for QUIET_TASK_S and watches it over SSE to the end."""
    quiet = {
        "id": "quiet",
        "action": "ACTION_TYPE_CUSTOM",
        "custom_action": "wait",
        "params": {"seconds": QUIET_TASK_S, "ignore_cancel": True},
    }
    body = {"request_id": str(uuid.uuid4()), "spec": {"todos": {"todos": [quiet]}}}
    watch = SseWatch()
    timeout = httpx.Timeout(10.0, read=WATCH_TIMEOUT_S)
    with httpx.Client(base_url=f"http://{address}", timeout=timeout, trust_env=False) as http:
        created = http.post("/v1/jobs", json=body)
        assert created.status_code == 200, created.text
        job_id = created.json()["job"]["job_id"]
        try:
            with http.stream("GET", f"/v1/jobs/{job_id}:watch") as response:
                assert response.status_code == 200, response.read()
                assert response.headers["content-type"].startswith("text/event-stream")
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        assert not line.strip(), line
                        continue
                    message = json.loads(line.removeprefix("data:"))
                    now = time.monotonic()
                    # Exactly one of the two in each message.
                    assert len(message) == 1, message
                    if "heartbeat" in message:
                        watch.heartbeats.append((now, message["heartbeat"]))
                    else:
                        watch.events.append((now, message["event"]))
        except httpx.RemoteProtocolError as error:  # the connection closed mid-response
            watch.cut = str(error)
    return watch


def test_heartbeats_keep_a_quiet_sse_watch_open_through_envoy(start_cli: StartCli) -> None:
    gateway, address, admin = _start(start_cli, HEARTBEAT_S)

    watch = _watch_quiet_job(address)

    assert not watch.cut
    events = [event for _, event in watch.events]
    assert [e["sequence"] for e in events] == [str(n) for n in range(1, len(events) + 1)]
    assert [e["terminal"] for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1]["job_state_changed"]["to_state"] == "JOB_STATE_SUCCEEDED"
    # The task was quiet for longer than the idle timeout: some two events came further apart
    # than Envoy lets a stream idle...
    event_times = [at for at, _ in watch.events]
    longest_quiet = max(b - a for a, b in itertools.pairwise(event_times))
    assert longest_quiet > IDLE_TIMEOUT_S, watch
    # ...and heartbeats filled the silence: the server's timestamps, as RFC 3339 strings.
    assert len(watch.heartbeats) >= 2, watch
    for _, stamp in watch.heartbeats:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stamp), stamp
        datetime.fromisoformat(stamp)
    assert _idle_timeouts(admin) == 0
    gateway.terminate()
    assert gateway.exit_code(STOP_TIMEOUT_S) == 0, gateway.report()


def test_without_heartbeats_envoy_cuts_the_same_quiet_watch(start_cli: StartCli) -> None:
    gateway, address, admin = _start(start_cli, 0.0)

    watch = _watch_quiet_job(address)

    # The negative control: the events before the quiet came, then Envoy closed the stream
    # as idle, before the task ended: no terminal event.
    assert watch.heartbeats == []
    events = [event for _, event in watch.events]
    assert events, watch
    assert not any(e["terminal"] for e in events), watch
    assert watch.cut, watch
    # Envoy says why: its counter of streams closed for idling.
    assert _idle_timeouts(admin) == 1
    gateway.terminate()
    assert gateway.exit_code(STOP_TIMEOUT_S) == 0, gateway.report()
