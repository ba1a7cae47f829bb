"""`cpa serve --with-gateway`: the embedded scheduler, a local agent and Envoy in front, in one
command: REST through the gateway's port reaches the scheduler, and stopping `cpa serve` stops
Envoy (process gone, port free). Every part is a real process on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import CONNECTED, GATEWAY, SERVING, START_TIMEOUT_S, CliProcess, StartCli

JOB_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
SERVE_WITH_GATEWAY = (
    *("serve", "--listen", "127.0.0.1:0", "--data-dir", "data", "--with-agent"),
    *("--with-gateway", "--gateway-listen", "127.0.0.1:0"),
)
BUILTIN = {"CPA_AGENT_EXECUTORS": "builtin"}


def _envoy_pid(serve: CliProcess) -> int:
    """The pid of the Envoy child of `cpa serve` (from /proc: Linux only, as the test runs)."""
    children: list[int] = []
    for task in Path(f"/proc/{serve.popen.pid}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    envoys = [
        pid
        for pid in children
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"envoy")
    ]
    assert len(envoys) == 1, children
    return envoys[0]


def _wait_gone(pid: int, timeout_s: float) -> None:
    """Until process `pid` no longer exists (reaped), polled with a deadline."""
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} still exists after {timeout_s}s")
        time.sleep(0.05)  # polling a condition with a deadline, not synchronising


def _port_is_free(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


def _start(start_cli: StartCli) -> tuple[CliProcess, str, str, str]:
    """`cpa serve --with-agent --with-gateway`: the process, the scheduler's address, the
    gateway's and its admin address, once all three parts are up."""
    serve = start_cli(*SERVE_WITH_GATEWAY, env=BUILTIN)
    upstream = serve.wait_for_line(SERVING, START_TIMEOUT_S)["address"]
    gateway = serve.wait_for_line(GATEWAY, START_TIMEOUT_S)
    assert gateway["upstreams"] == upstream
    serve.wait_for_line(CONNECTED, START_TIMEOUT_S)
    return serve, upstream, gateway["address"], gateway["admin"]


def test_serve_with_gateway_serves_rest_and_stops_envoy_with_it(start_cli: StartCli) -> None:
    serve, _, address, admin = _start(start_cli)
    envoy = _envoy_pid(serve)
    body = {
        "request_id": str(uuid.uuid4()),
        "spec": {
            "todos": {
                "todos": [
                    {
                        "id": "greet",
                        "action": "ACTION_TYPE_CUSTOM",
                        "custom_action": "echo",
                        "params": {"via": "serve --with-gateway"},
                    }
                ]
            }
        },
    }
    timeout = httpx.Timeout(10.0, read=JOB_TIMEOUT_S)
    with httpx.Client(base_url=f"http://{address}", timeout=timeout, trust_env=False) as http:
        created = http.post("/v1/jobs", json=body)
        assert created.status_code == 200, created.text
        job_id = created.json()["job"]["job_id"]
        # Until the terminal event, over SSE through the same gateway.
        with http.stream("GET", f"/v1/jobs/{job_id}:watch") as watch:
            data = [line for line in watch.iter_lines() if line.startswith("data:")]
        last = json.loads(data[-1].removeprefix("data:"))["event"]
        assert last["terminal"] is True
        done = http.get(f"/v1/jobs/{job_id}").json()["job"]
    assert done["state"] == "JOB_STATE_SUCCEEDED"
    assert done["tasks"][0]["outputs"] == {"via": "serve --with-gateway"}

    serve.terminate()
    assert serve.exit_code(STOP_TIMEOUT_S) == 0, serve.report()
    _wait_gone(envoy, STOP_TIMEOUT_S)
    assert _port_is_free(address)
    assert _port_is_free(admin)


def test_serve_with_gateway_rate_limits_each_rest_caller_by_its_own_address(
    start_cli: StartCli,
) -> None:
    """REST callers reach the scheduler through the loopback Envoy: `--with-gateway` trusts its
    x-forwarded-for, so each caller (here 127.0.0.2 and 127.0.0.3) has its own per-address
    bucket instead of all sharing the gateway's."""
    limits = {"CPA_RATE_LIMITS_ENABLED": "true", "CPA_RATE_LIMIT_PER_IP": "3"}
    serve = start_cli(*SERVE_WITH_GATEWAY, env={**BUILTIN, **limits})
    serve.wait_for_line(SERVING, START_TIMEOUT_S)
    address = serve.wait_for_line(GATEWAY, START_TIMEOUT_S)["address"]

    def client(source: str) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(
            base_url=f"http://{address}", transport=transport, timeout=10.0, trust_env=False
        )

    with client("127.0.0.2") as first, client("127.0.0.3") as second:
        answers = [first.get("/v1/jobs", params={"page_size": "1"}) for _ in range(4)]
        assert [a.status_code for a in answers[:3]] == [200, 200, 200]
        assert answers[3].status_code == 429, answers[3].text
        assert int(answers[3].headers["retry-after"]) > 0
        assert second.get("/v1/jobs", params={"page_size": "1"}).status_code == 200

    serve.terminate()
    assert serve.exit_code(STOP_TIMEOUT_S) == 0, serve.report()


def test_serve_stops_when_its_envoy_dies(start_cli: StartCli) -> None:
    serve, _, address, _ = _start(start_cli)
    os.kill(_envoy_pid(serve), signal.SIGKILL)

    assert serve.exit_code(STOP_TIMEOUT_S) == 1, serve.report()
    assert "the gateway's envoy exited with status -9; stopping" in serve.stderr()
    assert _port_is_free(address)


def test_serve_with_gateway_refusals(start_cli: StartCli) -> None:
    lone = start_cli("serve", "--gateway-listen", "127.0.0.1:0")
    assert lone.exit_code(STOP_TIMEOUT_S) == 2
    assert "cpa: serve: --gateway-listen goes with --with-gateway" in lone.stderr()

    # The gateway's port is taken: a clear error, and the scheduler that started is stopped.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = start_cli(
            *("serve", "--listen", "127.0.0.1:0", "--data-dir", "data"),
            *("--with-gateway", "--gateway-listen", f"127.0.0.1:{port}"),
        )
        scheduler = serve.wait_for_line(SERVING, START_TIMEOUT_S)["address"]
        assert serve.exit_code(STOP_TIMEOUT_S) == 2, serve.report()
    assert "cpa: gateway: envoy exited with status 1 before it was ready" in serve.stderr()
    assert _port_is_free(scheduler)


def test_a_serve_killed_9_leaves_no_envoy_behind(start_cli: StartCli) -> None:
    # Envoy is tied to the thread that started it (the death signal): nobody is left to stop
    # it otherwise, and it would keep the gateway's port.
    serve, _, address, admin = _start(start_cli)
    envoy = _envoy_pid(serve)

    serve.popen.kill()

    try:
        _wait_gone(envoy, STOP_TIMEOUT_S)
    finally:  # an Envoy left behind would hold the test's pipes open: the test would hang
        with contextlib.suppress(ProcessLookupError):
            os.kill(envoy, signal.SIGKILL)
    assert _port_is_free(address)
    assert _port_is_free(admin)
