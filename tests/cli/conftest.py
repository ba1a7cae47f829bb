"""Fixtures for `cpa` tests: CLI processes whose output lines tests wait for, and a shared server.

Processes run `sys.executable -m cpa_cli`; every one a test starts is killed in teardown. Waits have
deadlines and wake on the line they wait for; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .rest_gateway import RestStack

SERVING = re.compile(r"^cpa scheduler serving on (?P<address>\S+:\d+)$")
CONNECTED = re.compile(r"^cpa agent (?P<agent_id>\S+) connected to (?P<address>\S+)$")
GATEWAY = re.compile(
    r"^cpa gateway serving on (?P<address>\S+:\d+) \(admin (?P<admin>\S+:\d+)\) in front of "
    r"(?P<upstreams>.+)$"
)
# Long enough for a loaded CI machine; the usual start takes well under a second.
START_TIMEOUT_S = 15.0


@dataclass
class CliProcess:
    """A running `cpa` command: its stdout read line by line in a thread, stderr in a file."""

    args: tuple[str, ...]
    popen: subprocess.Popen[str]
    stderr_path: Path
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def start_reader(self) -> None:
        def read() -> None:
            assert self.popen.stdout is not None
            for line in self.popen.stdout:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)  # end of output

        self.reader = threading.Thread(target=read, name=f"stdout of {self.args[:2]}", daemon=True)
        self.reader.start()

    def wait_for_line(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """The first new stdout line matching `pattern`; fails at EOF or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern.pattern!r} in {timeout_s}s{self.report()}")
            if line is None:
                self.lines.put(None)  # keep EOF visible to later waits
                pytest.fail(f"output ended before {pattern.pattern!r}{self.report()}")
            self.seen.append(line)
            if match := pattern.search(line):
                return match

    def rest_of_output(self, timeout_s: float) -> list[str]:
        """Every stdout line until EOF (the process closed stdout, normally by exiting)."""
        deadline = time.monotonic() + timeout_s
        lines: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                pytest.fail(f"output did not end in {timeout_s}s{self.report()}")
            if line is None:
                self.lines.put(None)
                self.seen += lines
                return lines
            lines.append(line)

    def exit_code(self, timeout_s: float) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(self.args)} still running after {timeout_s}s{self.report()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def report(self) -> str:
        return (
            f"\n--- {' '.join(self.args)}\n--- stdout so far:\n"
            + "\n".join(self.seen)
            + f"\n--- stderr:\n{self.stderr()[-4000:]}"
        )

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)


StartCli = Callable[..., CliProcess]


def _cli_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPA_")}
    # As for the suite's in-process servers (tests/conftest.py): limits only where a test asks.
    env["CPA_RATE_LIMITS_ENABLED"] = "false"
    env.update(extra or {})
    return env


def _start(
    args: Sequence[str],
    *,
    workdir: Path,
    stderr_path: Path,
    env: dict[str, str] | None = None,
    program: Sequence[str] = (sys.executable, "-m", "cpa_cli"),
) -> CliProcess:
    """`program ARGS` (the `cpa` of this checkout unless told; tests/deploy runs an installed
    one) in `workdir`, its stdout read line by line."""
    with stderr_path.open("w", encoding="utf-8") as stderr:
        popen = subprocess.Popen(
            [*program, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=workdir,
            env=_cli_env(env),
        )
    process = CliProcess(args=tuple(args), popen=popen, stderr_path=stderr_path)
    process.start_reader()
    return process


def _kill_all(processes: list[CliProcess]) -> None:
    for process in processes:
        if process.popen.poll() is None:
            process.popen.kill()
        process.popen.wait(timeout=10)
        # A child of the command (`cpa gateway`'s Envoy) may hold stdout a moment longer: let
        # the reader see EOF before the file is closed under it.
        if process.reader is not None:
            process.reader.join(timeout=10)
        if process.popen.stdout is not None:
            process.popen.stdout.close()


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator[StartCli]:
    """Starts `cpa ARGS...` in tmp_path (CPA_* variables of the caller removed)."""
    processes: list[CliProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> CliProcess:
        stderr_path = tmp_path / f"stderr-{len(processes)}-{args[0]}.txt"
        process = _start(args, workdir=tmp_path, stderr_path=stderr_path, env=env)
        processes.append(process)
        return process

    yield start
    _kill_all(processes)


def start_server(
    start_cli: StartCli, *args: str, env: dict[str, str] | None = None
) -> tuple[CliProcess, str]:
    """`cpa serve --listen 127.0.0.1:0 ARGS`; returns the process and the address it serves."""
    server = start_cli("serve", "--listen", "127.0.0.1:0", "--data-dir", "data", *args, env=env)
    address = server.wait_for_line(SERVING, START_TIMEOUT_S)["address"]
    return server, address


def start_gateway(
    start_cli: StartCli, *upstreams: str, env: dict[str, str] | None = None
) -> tuple[CliProcess, re.Match[str]]:
    """`cpa gateway --listen 127.0.0.1:0 --upstream U...`; the process and its serving line
    (groups address, admin, upstreams) once Envoy is ready."""
    flags = [f for upstream in upstreams for f in ("--upstream", upstream)]
    gateway = start_cli("gateway", "--listen", "127.0.0.1:0", *flags, env=env)
    return gateway, gateway.wait_for_line(GATEWAY, START_TIMEOUT_S)


@dataclass(frozen=True)
class SharedServer:
    address: str
    agent_id: str


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    """One `cpa serve --with-agent` for the in-process tests; tests tell their jobs apart by
    a label of their own."""
    workdir = tmp_path_factory.mktemp("shared-server")
    server = _start(
        [
            *("serve", "--listen", "127.0.0.1:0", "--data-dir", "data"),
            *("--with-agent", "--agent-id", "shared-agent", "--agent-slots", "8"),
        ],
        workdir=workdir,
        stderr_path=workdir / "stderr.txt",
        # The built-in actions only: which other installed executors are available (the browser
        # where Chromium is) depends on the machine, and the tests count the actions offered.
        env={"CPA_AGENT_EXECUTORS": "builtin"},
    )
    try:
        address = server.wait_for_line(SERVING, START_TIMEOUT_S)["address"]
        server.wait_for_line(CONNECTED, START_TIMEOUT_S)
        yield SharedServer(address=address, agent_id="shared-agent")
        server.terminate()
        server.exit_code(timeout_s=15)
    finally:
        _kill_all([server])


@pytest.fixture
def server_address(shared_server: SharedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shared server's address, also as $CPA_SERVER (the default of --server)."""
    monkeypatch.setenv("CPA_SERVER", shared_server.address)
    return shared_server.address


# The REST stack's budgets: small, so size limits are cheap to reach; the scheduler and the
# gateway share them as `cpa serve` and `cpa gateway` do from one environment.
REST_STACK_ENV = {
    "CPA_MAX_REQUEST_BYTES": str(256 * 1024),
    "CPA_AGENT_EXECUTORS": "builtin",
    "CPA_MAX_WATCHERS_PER_TENANT": "2",
}


@pytest.fixture(scope="module")
def rest_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestStack]:
    """`cpa serve --with-agent` and `cpa gateway` in front of it, for one test module (tests
    tell their jobs apart by labels). A RestStack (tests/cli/rest_gateway.py)."""
    from .rest_gateway import RestStack  # it imports this module

    workdir = tmp_path_factory.mktemp("rest-stack")
    agent_id = "rest-agent"
    processes: list[CliProcess] = []
    try:
        server = _start(
            [
                *("serve", "--listen", "127.0.0.1:0", "--data-dir", "data"),
                *("--with-agent", "--agent-id", agent_id, "--agent-slots", "8"),
            ],
            workdir=workdir,
            stderr_path=workdir / "server.txt",
            env=REST_STACK_ENV,
        )
        processes.append(server)
        upstream = server.wait_for_line(SERVING, START_TIMEOUT_S)["address"]
        server.wait_for_line(CONNECTED, START_TIMEOUT_S)
        gateway = _start(
            ["gateway", "--listen", "127.0.0.1:0", "--upstream", upstream],
            workdir=workdir,
            stderr_path=workdir / "gateway.txt",
            env=REST_STACK_ENV,
        )
        processes.append(gateway)
        match = gateway.wait_for_line(GATEWAY, START_TIMEOUT_S)
        yield RestStack(
            server=server,
            gateway=gateway,
            upstream=upstream,
            address=match["address"],
            admin=match["admin"],
            agent_id=agent_id,
        )
    finally:
        _kill_all(processes)
