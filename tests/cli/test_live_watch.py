"""What a user sees while a job runs: why a queued task waits (live, and in `jobs list`), and the
progress the executor reports, as bars on a terminal and as plain lines elsewhere.

Real `cpa serve --with-agent` processes (the agent offers noop/echo/wait/fail and nothing else);
the terminal is a real pseudo-terminal, so rich draws exactly what a user would see.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cpa_cli.main import main

from .conftest import START_TIMEOUT_S, StartCli, start_server

WAITING = re.compile(
    r"^\s+-\s+\+\d+\.\d{3}s\s+desk\s+waiting: no connected agent offers action 'noop', "
    r"capability 'uia-desktop' \(agent 'cli-agent' lacks capabilities uia-desktop\)$"
)
SUBMITTED = re.compile(r"^(?P<job_id>[0-9a-f]{32})$")


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_task_no_agent_can_take_says_why_live_and_in_jobs_list(
    start_cli: StartCli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, address = start_server(start_cli, "--with-agent", "--agent-id", "cli-agent")
    todos = _write(
        tmp_path / "todos.yaml",
        "- {id: ready, action: echo, params: {ok: true}}\n"
        "- {id: desk, action: noop, required_capabilities: [uia-desktop]}\n",
    )
    watch = start_cli("submit", "--todos", todos, "--watch", "--server", address)
    job_id = watch.wait_for_line(SUBMITTED, START_TIMEOUT_S)["job_id"]

    watch.wait_for_line(WAITING, START_TIMEOUT_S)

    assert main(["jobs", "list", "--server", address]) == 0
    listed = capsys.readouterr().out.splitlines()
    row = next(line for line in listed if line.startswith(job_id))
    assert row.split()[1] == "RUNNING"
    assert row.endswith(
        "desk waits: no connected agent offers action 'noop', capability 'uia-desktop' "
        "(agent 'cli-agent' lacks capabilities uia-desktop)"
    )
    assert main(["jobs", "get", job_id, "--server", address]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert any(
        line.split()[:3] == ["desk", "noop", "QUEUED"] and "lacks capabilities" in line
        for line in shown
    )

    assert main(["jobs", "cancel", job_id, "--server", address]) == 0
    rest = watch.rest_of_output(timeout_s=START_TIMEOUT_S)
    assert watch.exit_code(timeout_s=START_TIMEOUT_S) == 1
    assert re.match(rf"^job {job_id} CANCELLED", rest[-1])
    # Said once, not once a second: the reason did not change.
    assert sum(1 for line in watch.seen if "waiting:" in line) == 1


def test_progress_is_a_plain_line_when_not_a_terminal(start_cli: StartCli, tmp_path: Path) -> None:
    _, address = start_server(start_cli, "--with-agent")
    todos = _write(tmp_path / "todos.yaml", "- {id: slow, action: wait, params: {seconds: 1.5}}\n")
    watch = start_cli("submit", "--todos", todos, "--watch", "--server", address)
    watch.wait_for_line(re.compile(r"\sslow\s+progress 0%  waiting 1.5s$"), START_TIMEOUT_S)
    # About a second in (the exact figure depends on the machine's load).
    watch.wait_for_line(re.compile(r"\sslow\s+progress [1-9]\d%  waited 1\.\ds$"), START_TIMEOUT_S)
    assert watch.exit_code(timeout_s=START_TIMEOUT_S) == 0
    assert "\x1b[" not in "\n".join(watch.seen)  # no terminal control codes in a pipe


def test_progress_is_a_bar_per_running_task_on_a_terminal(
    start_cli: StartCli, tmp_path: Path
) -> None:
    _, address = start_server(start_cli, "--with-agent")
    todos = _write(tmp_path / "todos.yaml", "- {id: slow, action: wait, params: {seconds: 2.5}}\n")
    output = _run_on_a_terminal(
        ["submit", "--todos", todos, "--watch", "--server", address], cwd=tmp_path
    )
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)  # drop cursor movements and colours
    # The bar of task "slow": its id, the bar itself, the percent the wait executor reported.
    bar = re.compile(r"slow\s+[━╸╺ ]+\s+[1-9]\d%\s+waited [12]\.\ds")
    assert bar.search(text), text[-3000:]
    # Progress is the bar's, not also a line; the state changes still are lines.
    assert not re.search(r"progress [1-9]\d%", text)
    assert "QUEUED -> RUNNING" in text
    assert re.search(r"job [0-9a-f]{32} SUCCEEDED", text)


def _run_on_a_terminal(args: list[str], *, cwd: Path, timeout_s: float = 30.0) -> str:
    """`cpa ARGS` with its stdout on a pseudo-terminal; everything it wrote there."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPA_")}
    env.update({"COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"})
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "cpa_cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    os.close(follower)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout_s)
        reader.join(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    assert process.stderr is not None
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    assert code == 0, stderr
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_cpa_submit_watch_skips_the_servers_heartbeats(start_cli: StartCli, tmp_path: Path) -> None:
    """A task quiet for 1.5 s, heartbeats every 0.2 s: `cpa submit --watch --json` prints the
    response and the events, each a JobEvent with a sequence, and nothing for the heartbeats."""
    _, address = start_server(
        start_cli,
        "--with-agent",
        env={"CPA_WATCH_HEARTBEAT_S": "0.2", "CPA_AGENT_EXECUTORS": "builtin"},
    )
    todos = _write(
        tmp_path / "quiet.yaml",
        "- {id: quiet, action: wait, params: {seconds: 1.5, ignore_cancel: true}}\n",
    )
    watch = start_cli("submit", "--todos", todos, "--watch", "--json", "--server", address)
    assert watch.exit_code(START_TIMEOUT_S + 10) == 0, watch.report()
    response, *events = [json.loads(line) for line in watch.rest_of_output(5.0)]
    assert "job" in response
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1)), events
    assert events[-1]["terminal"] is True
