"""`cpa demo`, `cpa serve`, `cpa agent` and `cpa submit --watch` as real processes."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from .conftest import CONNECTED, START_TIMEOUT_S, StartCli, start_server

# Bounds on whole runs: a demo takes about a second, a graceful stop well under one.
DEMO_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
JOB_TIMEOUT_S = 20.0

JOB_ID = re.compile(r"^(?P<job_id>[0-9a-f]{32})$")
OUTCOME = re.compile(r"^job (?P<job_id>[0-9a-f]{32}) (?P<state>[A-Z_]+) in ")
EVENT = re.compile(r"^\s*(?P<seq>\d+)\s+\+\d+\.\d{3}s\s+(?P<subject>\S+)\s+(?P<text>.+)$")

TODOS_YAML = """\
- id: fetch
  action: wait
  params: {seconds: 0.1}
- id: report
  action: echo
  depends_on: [fetch]
  params: {result: done}
"""


def test_minimal_demo_runs_the_job_to_success_and_cleans_up(
    start_cli: StartCli, tmp_path: Path
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    demo = start_cli("demo", "--minimal", env={"TMPDIR": str(temp)})

    lines = demo.rest_of_output(DEMO_TIMEOUT_S)

    assert demo.exit_code(STOP_TIMEOUT_S) == 0, demo.report()
    outcome = OUTCOME.match(lines[-1])
    assert outcome is not None, lines
    assert outcome["state"] == "SUCCEEDED"
    events = [m for line in lines if (m := EVENT.match(line))]
    assert [int(m["seq"]) for m in events] == list(range(1, len(events) + 1))
    running = {m["subject"] for m in events if "-> RUNNING" in m["text"]}
    assert {"fetch_invoice", "fetch_contract", "merge", "notify"} <= running
    # Both fetches started before either finished: the branches ran in parallel.
    order = [(m["subject"], m["text"].split("  ")[0]) for m in events]
    started = [order.index((t, "QUEUED -> RUNNING")) for t in ("fetch_invoice", "fetch_contract")]
    finished = [
        order.index((t, "RUNNING -> SUCCEEDED")) for t in ("fetch_invoice", "fetch_contract")
    ]
    assert max(started) < min(finished)
    assert any(re.match(r"^\s+merge\s+echo\s+SUCCEEDED\s+1\s+demo-agent\s", ln) for ln in lines)
    assert list(temp.iterdir()) == []  # the temporary store is gone


def test_demo_refuses_a_month_that_is_not_one(start_cli: StartCli) -> None:
    demo = start_cli("demo", "--month", "2026-13")

    assert demo.exit_code(STOP_TIMEOUT_S) == 2
    assert "cpa: demo: --month: month must be YYYY-MM, got '2026-13'" in demo.stderr()


def test_submit_watch_against_serve_with_agent(start_cli: StartCli, tmp_path: Path) -> None:
    _server, address = start_server(start_cli, "--with-agent", "--agent-id", "local-1")
    (tmp_path / "todos.yaml").write_text(TODOS_YAML, encoding="utf-8")

    submit = start_cli("submit", "--todos", "todos.yaml", "--watch", "--server", address)

    job_id = submit.wait_for_line(JOB_ID, START_TIMEOUT_S)["job_id"]
    lines = submit.rest_of_output(JOB_TIMEOUT_S)
    assert submit.exit_code(STOP_TIMEOUT_S) == 0, submit.report()
    outcome = OUTCOME.match(lines[-1])
    assert outcome is not None, lines
    assert (outcome["job_id"], outcome["state"]) == (job_id, "SUCCEEDED")
    assert any(re.search(r"\sfetch\s+QUEUED -> RUNNING  attempt 1 on local-1$", ln) for ln in lines)
    assert any(
        re.search(r'\sreport\s+RUNNING -> SUCCEEDED  \{"result": "done"\}$', ln) for ln in lines
    )


def test_sigterm_stops_serve_gracefully(start_cli: StartCli) -> None:
    server, _address = start_server(start_cli, "--with-agent")
    server.wait_for_line(CONNECTED, START_TIMEOUT_S)

    server.terminate()

    assert server.exit_code(STOP_TIMEOUT_S) == 0, server.report()
    assert "SIGTERM received, stopping" in server.stderr()


def test_agent_connects_to_serve_runs_work_and_drains_on_sigterm(
    start_cli: StartCli, tmp_path: Path
) -> None:
    server, address = start_server(start_cli)
    agent = start_cli("agent", "--server", address, "--agent-id", "worker-7", "--label", "site=lab")
    connected = agent.wait_for_line(CONNECTED, START_TIMEOUT_S)
    assert (connected["agent_id"], connected["address"]) == ("worker-7", address)

    (tmp_path / "lab.yaml").write_text(
        "- {id: probe, action: echo, params: {ok: true}, required_labels: {site: lab}}\n",
        encoding="utf-8",
    )
    submit = start_cli("submit", "--todos", "lab.yaml", "--watch", "--server", address)
    lines = submit.rest_of_output(JOB_TIMEOUT_S)
    assert submit.exit_code(STOP_TIMEOUT_S) == 0, submit.report()
    assert any(
        re.search(r"\sprobe\s+QUEUED -> RUNNING  attempt 1 on worker-7$", ln) for ln in lines
    )

    agent.terminate()
    assert agent.exit_code(STOP_TIMEOUT_S) == 0, agent.report()
    server.terminate()
    assert server.exit_code(STOP_TIMEOUT_S) == 0, server.report()


def test_a_second_serve_on_the_same_port_fails_saying_the_address_is_in_use(
    start_cli: StartCli,
) -> None:
    first, address = start_server(start_cli)

    second = start_cli("serve", "--listen", address, "--data-dir", "other-data")

    assert second.exit_code(START_TIMEOUT_S) == 2, second.report()
    assert f"cannot bind {address}: address already in use" in second.stderr(), second.report()
    assert first.popen.poll() is None  # the first one still serves, alone on its port


def test_a_second_serve_on_the_same_data_dir_fails_naming_the_first_one(
    start_cli: StartCli, tmp_path: Path
) -> None:
    first, _address = start_server(start_cli)

    second = start_cli("serve", "--listen", "127.0.0.1:0", "--data-dir", "data")

    assert second.exit_code(START_TIMEOUT_S) == 2, second.report()
    assert f"in use by another cpa server (pid {first.popen.pid}" in second.stderr()
    assert (tmp_path / "data" / "cpa.lock").read_text().strip() == str(first.popen.pid)
    # Once the first one stops, the directory is free again.
    first.terminate()
    assert first.exit_code(STOP_TIMEOUT_S) == 0, first.report()
    start_server(start_cli)


def test_the_data_dir_is_private_to_its_owner(start_cli: StartCli, tmp_path: Path) -> None:
    start_server(start_cli)

    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = sorted(path.name for path in data.iterdir())
    assert {"cpa.lock", "cpa.sqlite3", "cpa.sqlite3-wal", "cpa.sqlite3-shm"} <= set(files)
    # Files 0600, directories (artifacts/ and below) 0700, all the way down.
    for path in data.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert (data / "artifacts").is_dir()


def test_serve_with_a_shared_database_refuses_to_start_without_page_token_secrets(
    start_cli: StartCli,
) -> None:
    # Checked before anything is opened: no database needs to answer at this address.
    env = {"CPA_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    server = start_cli("serve", "--listen", "127.0.0.1:0", env=env)

    assert server.exit_code(START_TIMEOUT_S) == 2, server.report()
    assert "CPA_PAGE_TOKEN_SECRETS is not set" in server.stderr(), server.report()


def test_the_embedded_page_token_secret_survives_a_restart(
    start_cli: StartCli, tmp_path: Path
) -> None:
    first, _address = start_server(start_cli)
    secret = (tmp_path / "data" / "page_token.secret").read_text()
    first.terminate()
    assert first.exit_code(STOP_TIMEOUT_S) == 0, first.report()

    start_server(start_cli)

    assert (tmp_path / "data" / "page_token.secret").read_text() == secret
    assert len(bytes.fromhex(secret.strip())) == 32
