"""Two scheduler replicas (distributed: PostgreSQL + Redis) behind one real Envoy (`cpa gateway
--upstream A --upstream B`), an agent connected through the gateway, and REST traffic throughout:

1. both replicas serve calls (Envoy's per-host counters, admin /clusters);
2. A stops gracefully (SIGTERM: health NOT_SERVING first): not one call fails;
3. A comes back on its port and rejoins the rotation (health check);
4. B is killed -9: only calls in flight on B at that moment may fail (a bound, printed);
5. every job submitted through the gateway completes, those whose POST failed re-sent with
   their request_id (which never makes a second job).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import Cluster, Replica

from .conftest import StartCli, start_gateway

WORKERS = 3  # REST callers at once; also the most calls in flight when B is killed
HEALTH_INTERVAL_S = 0.5
PHASE_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 60.0
# Successful calls a phase needs after its event (the stop, the kill) before it ends.
CALLS_AFTER = 30


def _job(label: str, request_id: str) -> dict[str, Any]:
    echo = {"id": "e", "action": "ACTION_TYPE_CUSTOM", "custom_action": "echo", "params": {}}
    return {
        "request_id": request_id,
        "spec": {"todos": {"todos": [echo]}, "labels": {"run": label}},
    }


@dataclass
class Call:
    phase: str
    kind: str  # "POST" or "GET"
    ok: bool
    detail: str
    request_id: str = ""


@dataclass
class Traffic:
    """WORKERS threads that submit a job (POST /v1/jobs) and read it back (GET) in a loop."""

    address: str
    label: str = field(default_factory=lambda: f"failover-{uuid.uuid4().hex[:8]}")
    phase: str = "both"
    calls: list[Call] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for n in range(WORKERS):
            thread = threading.Thread(target=self._run, name=f"rest-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _run(self) -> None:
        with httpx.Client(base_url=f"http://{self.address}", timeout=10.0, trust_env=False) as http:
            while not self._stop.is_set():
                phase, request_id = self.phase, str(uuid.uuid4())
                try:
                    created = http.post("/v1/jobs", json=_job(self.label, request_id))
                except httpx.HTTPError as error:
                    self._record(Call(phase, "POST", False, repr(error), request_id))
                    continue
                ok = created.status_code == 200
                self._record(Call(phase, "POST", ok, created.text[:200], request_id))
                if not ok:
                    continue
                job_id = created.json()["job"]["job_id"]
                with self._lock:
                    self.jobs.append(job_id)
                try:
                    got = http.get(f"/v1/jobs/{job_id}")
                    self._record(Call(phase, "GET", got.status_code == 200, got.text[:200]))
                except httpx.HTTPError as error:
                    self._record(Call(phase, "GET", False, repr(error)))

    def count(self, phase: str, *, ok: bool) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c.phase == phase and c.ok is ok)

    def failures(self, phase: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.phase == phase and not c.ok]


def _until(condition: Callable[[], bool], what: str, timeout_s: float = PHASE_TIMEOUT_S) -> None:
    """Polls `condition` until it holds, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s}s: {what}")
        time.sleep(0.05)  # polling a condition with a deadline, not synchronising


def _hosts(admin: str) -> dict[str, dict[str, str]]:
    """Envoy's view of each upstream of the scheduler cluster (admin /clusters): per HOST:PORT,
    its counters and flags (rq_success, rq_error, health_flags, ...)."""
    text = httpx.get(f"http://{admin}/clusters", trust_env=False, timeout=5.0).text
    hosts: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "cpa_scheduler":
            hosts.setdefault(parts[1], {})[parts[2]] = parts[3]
    return hosts


def _served(admin: str, replica: Replica) -> int:
    return int(_hosts(admin).get(replica.target, {}).get("rq_success", "0"))


def _out_of_rotation(admin: str, replica: Replica) -> bool:
    """Envoy no longer sends it calls: its active health check or outlier detection failed it."""
    flags = _hosts(admin).get(replica.target, {}).get("health_flags", "")
    return "failed_active_hc" in flags or "failed_outlier_check" in flags


def _calls_after(traffic: Traffic, phase: str) -> Callable[[], bool]:
    return lambda: traffic.count(phase, ok=True) >= CALLS_AFTER


def test_replicas_behind_envoy_fail_over_without_losing_calls_or_jobs(
    cluster: Cluster, start_cli: StartCli
) -> None:
    cluster.settings["CPA_SHUTDOWN_DRAIN_S"] = "1"
    # A stopping replica serves until the gateway's two failed health checks took it out.
    cluster.settings["CPA_SHUTDOWN_UNREADY_S"] = str(3 * HEALTH_INTERVAL_S)
    a, b = cluster.replica("a"), cluster.replica("b")
    gateway, ready = start_gateway(
        start_cli,
        a.target,
        b.target,
        env={"CPA_GATEWAY_HEALTH_INTERVAL_S": str(HEALTH_INTERVAL_S)},
    )
    address, admin = ready["address"], ready["admin"]
    # The agent dials the gateway too: its stream lands on either replica and moves on.
    cluster.agent("worker", address, slots=8)
    traffic = Traffic(address)
    traffic.start()
    try:
        # 1. Both replicas serve REST calls.
        _until(lambda: min(_served(admin, a), _served(admin, b)) >= 10, "both replicas serve")
        assert traffic.failures("both") == []

        # 2. A stops gracefully: NOT_SERVING, drain, then it stops listening. No call fails.
        traffic.phase = "graceful"
        a.process.terminate()
        assert a.process.wait(timeout=PHASE_TIMEOUT_S) == 0, cluster.log_tails()
        traffic.phase = "after graceful"
        _until(_calls_after(traffic, "after graceful"), "calls after A stopped")
        graceful = traffic.failures("graceful") + traffic.failures("after graceful")
        assert graceful == [], graceful

        # 3. A comes back on its port; the health check brings it back into rotation.
        traffic.phase = "rejoin"
        again = cluster.replica("a-again", port=a.port)
        started = time.monotonic()
        before = _served(admin, again)
        _until(lambda: _served(admin, again) > before + 5, "A serves again", JOB_TIMEOUT_S)
        rejoined_s = time.monotonic() - started

        # 4. B is killed -9: calls in flight on it may fail, later ones go to A.
        traffic.phase = "kill"
        b.kill()
        killed_at = time.monotonic()
        _until(lambda: _out_of_rotation(admin, b), "B out of rotation")
        out_s = time.monotonic() - killed_at
        _until(_calls_after(traffic, "kill"), "calls after B was killed")
        killed = traffic.failures("kill")
        print(
            f"\ngraceful stop: 0 failed of {traffic.count('graceful', ok=True)} calls during it;"
            f" A back in rotation {rejoined_s:.1f}s after its restart;"
            f" kill -9: {len(killed)} failed, B out of rotation after {out_s:.2f}s"
            f" ({_hosts(admin)[b.target].get('health_flags')}); {len(traffic.calls)} calls in all"
        )
        for call in killed:
            print(f"  {call.kind}: {call.detail}")
        assert len(killed) <= WORKERS, killed
    finally:
        traffic.stop()

    # 5. Every job completes. A POST that failed is sent again with its request_id: it answers
    # the job if the first one reached a replica, or makes it now, never a second one.
    retried = [c for c in traffic.calls if c.kind == "POST" and not c.ok]
    with httpx.Client(base_url=f"http://{address}", timeout=10.0, trust_env=False) as http:
        for call in retried:
            again_created = http.post("/v1/jobs", json=_job(traffic.label, call.request_id))
            assert again_created.status_code == 200, again_created.text
            traffic.jobs.append(again_created.json()["job"]["job_id"])
        pending = set(traffic.jobs)

        def all_done() -> bool:
            for job_id in list(pending):
                state = http.get(f"/v1/jobs/{job_id}").json()["job"]["state"]
                assert state not in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED"), (job_id, state)
                if state == "JOB_STATE_SUCCEEDED":
                    pending.discard(job_id)
            return not pending

        _until(all_done, f"{len(pending)} jobs complete", JOB_TIMEOUT_S)
        listed: set[str] = set()
        token = ""
        while True:
            params = {"filter": f'labels.run = "{traffic.label}"', "page_size": "1000"}
            page = http.get("/v1/jobs", params={**params, "page_token": token}).json()
            listed |= {j["job_id"] for j in page["jobs"]}
            if not (token := page["next_page_token"]):
                break
    # One job per request id: the re-sent POSTs made none twice.
    assert listed == set(traffic.jobs), cluster.log_tails()
    gateway.terminate()
