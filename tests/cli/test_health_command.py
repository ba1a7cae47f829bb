"""`cpa health`: the container health check (exit 0 SERVING, 1 anything else, 2 bad usage)."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from cpa_cli.main import main

from .conftest import CONNECTED, START_TIMEOUT_S, SharedServer, StartCli, start_server

STOP_TIMEOUT_S = 30.0


def health(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`cpa health ARGS` in this process: exit code, stdout, stderr."""
    code = main(["health", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_serving_scheduler_is_healthy(
    capsys: pytest.CaptureFixture[str], shared_server: SharedServer
) -> None:
    address = shared_server.address
    assert health(capsys, "--server", address) == (0, f"{address}: SERVING\n", "")
    code, out, _ = health(
        capsys, "--server", address, "--service", "cpa.scheduler.v1.SchedulerService"
    )
    assert (code, out) == (0, f"{address}: SERVING\n")


def test_an_unknown_service_is_unhealthy(
    capsys: pytest.CaptureFixture[str], shared_server: SharedServer
) -> None:
    code, out, err = health(capsys, "--server", shared_server.address, "--service", "no.Such")
    assert (code, out) == (1, "")
    assert err.startswith(f"cpa health: {shared_server.address}: NOT_FOUND: ")


def test_an_unreachable_server_is_unhealthy_within_the_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    code, out, err = health(capsys, "--server", address, "--timeout", "5")
    assert (code, out) == (1, "")
    assert err.startswith(f"cpa health: {address}: UNAVAILABLE: ")


def test_agent_name_requires_that_agent_connected(
    capsys: pytest.CaptureFixture[str], shared_server: SharedServer
) -> None:
    # The shared server's agent runs in its process on this host: its name is the host name.
    address = shared_server.address
    code, _, _ = health(capsys, "--server", address, "--agent-name", socket.gethostname())
    assert code == 0
    code, out, err = health(capsys, "--server", address, "--agent-name", "nobody-here")
    assert (code, out) == (1, "")
    assert err == (
        f"cpa health: {address}: SERVING, but no agent named 'nobody-here' is connected\n"
    )


@pytest.mark.parametrize("timeout", ["0", "-1", "nan"])
def test_a_bad_timeout_is_a_usage_error(capsys: pytest.CaptureFixture[str], timeout: str) -> None:
    code, _, err = health(capsys, "--timeout", timeout)
    assert code == 2
    assert err == "cpa: health: --timeout must be > 0\n"


@pytest.mark.parametrize("server", ["", "  "])
def test_an_empty_server_is_a_usage_error(capsys: pytest.CaptureFixture[str], server: str) -> None:
    code, _, err = health(capsys, "--server", server)
    assert code == 2
    assert err == "cpa: health: --server needs HOST:PORT\n"


def test_a_draining_scheduler_is_not_serving(
    capsys: pytest.CaptureFixture[str], start_cli: StartCli, tmp_path: Path
) -> None:
    """While a stopping server waits for its agents' work, health says NOT_SERVING: what takes a
    replica out of the gateway's rotation and marks its container unhealthy."""
    server, address = start_server(start_cli)
    agent = start_cli("agent", "--server", address, "--executors", "builtin")
    agent.wait_for_line(CONNECTED, START_TIMEOUT_S)
    (tmp_path / "hold.yaml").write_text(
        "- {id: hold, action: wait, params: {seconds: 20}}\n", encoding="utf-8"
    )
    submit = start_cli("submit", "--todos", "hold.yaml", "--watch", "--server", address)
    submit.wait_for_line(re.compile(r"\shold\s+QUEUED -> RUNNING"), START_TIMEOUT_S)
    assert health(capsys, "--server", address)[0] == 0

    server.terminate()  # the drain waits (up to CPA_SHUTDOWN_DRAIN_S) for the running wait

    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        code, _, err = health(capsys, "--server", address, "--timeout", "2")
        if code == 1:
            break
        assert time.monotonic() < deadline, "health stayed SERVING after SIGTERM"
    assert err == f"cpa health: {address}: NOT_SERVING\n", server.report()
