"""TLS end to end with processes: `cpa serve` on a TLS listener, `cpa agent`, `cpa submit` and
`cpa agents` with --ca-file; a CLI without the CA gets a readable refusal; SIGHUP rotates the
certificate for new connections; with authentication on, the same commands send their key over
the TLS channel (docs/SECURITY.md)."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

from tests.fixtures.tls import Pki

from .conftest import CONNECTED, START_TIMEOUT_S, StartCli, start_server

RUN_TIMEOUT_S = 30.0


def test_a_tls_server_runs_a_job_for_an_agent_and_a_cli_that_trust_its_ca(
    start_cli: StartCli, tmp_path: Path
) -> None:
    pki = Pki.create(tmp_path / "pki")
    ca = ("--ca-file", str(pki.ca_file))
    server, address = start_server(start_cli, env=pki.server_env())
    agent = start_cli(
        *("agent", "--server", address, "--agent-id", "tls-agent", "--executors", "builtin"), *ca
    )
    agent.wait_for_line(CONNECTED, START_TIMEOUT_S)
    todos = tmp_path / "todos.yaml"
    todos.write_text("- {id: hello, action: echo, params: {greeting: hi}}\n")

    submit = start_cli("submit", "--server", address, *ca, "--todos", str(todos), "--watch")
    out = submit.rest_of_output(RUN_TIMEOUT_S)
    assert submit.exit_code(RUN_TIMEOUT_S) == 0, submit.report()
    assert re.match(r"^job \S+ SUCCEEDED in ", out[-1]), out

    agents = start_cli("agents", "--server", address, *ca)
    lines = agents.rest_of_output(RUN_TIMEOUT_S)
    assert agents.exit_code(RUN_TIMEOUT_S) == 0, agents.report()
    assert any(line.split()[0] == "tls-agent" for line in lines[1:]), lines

    # Without the CA (the system's roots do not know the test's CA): exit 2, one clear report.
    stranger = start_cli("agents", "--server", address, "--tls")
    assert stranger.exit_code(RUN_TIMEOUT_S) == 2
    first, second, third = stranger.stderr().splitlines()[:3]
    assert first == (
        f"cpa: UNAVAILABLE: no TLS connection to the scheduler at {address}: the server's "
        "certificate is not trusted (not signed by the CA the client trusts, expired, or not "
        "naming the address dialled)"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in second
    assert third.startswith("  Give --ca-file (or $CPA_TLS_CA_FILE) the CA")
    assert "Traceback" not in stranger.stderr()
    server.terminate()
    assert server.exit_code(RUN_TIMEOUT_S) == 0


def test_sighup_gives_new_connections_the_new_certificate(
    start_cli: StartCli, tmp_path: Path
) -> None:
    pki = Pki.create(tmp_path / "pki")
    successor = Pki.create(tmp_path / "successor", name="successor")
    # No file check within the test: the signal does the reload.
    server, address = start_server(
        start_cli, env={**pki.server_env(), "CPA_TLS_RELOAD_CHECK_S": "3600"}
    )

    def health(ca_file: Path) -> int:
        check = start_cli("health", "--server", address, "--ca-file", str(ca_file))
        return check.exit_code(RUN_TIMEOUT_S)

    assert health(pki.ca_file) == 0
    successor.issue_server(pki.cert_file, pki.key_file)
    server.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    # The handler runs when the server's loop takes the signal: wait for its effect.
    while health(successor.ca_file) != 0:
        assert time.monotonic() < deadline, server.report()
    assert health(pki.ca_file) == 1
    assert "TLS certificate reloaded for new connections" in server.stderr()
    server.terminate()
    assert server.exit_code(RUN_TIMEOUT_S) == 0


def test_tls_and_credentials_together(start_cli: StartCli, tmp_path: Path) -> None:
    """Authentication on over TLS: `cpa` commands take --ca-file and send their key (here the
    local admin key), the agent its token; a call without a key is refused."""
    pki = Pki.create(tmp_path / "pki")
    ca = ("--ca-file", str(pki.ca_file))
    server, address = start_server(
        start_cli, env={**pki.server_env(), "CPA_INSECURE_LOCAL": "false"}
    )
    made = start_cli(
        *("keys", "create", "--role", "agent", "--action", "*", "--json", "--server", address), *ca
    )
    out = made.rest_of_output(RUN_TIMEOUT_S)
    assert made.exit_code(RUN_TIMEOUT_S) == 0, made.report()
    token = json.loads(out[0])["secret"]
    agent = start_cli(
        *("agent", "--server", address, "--agent-id", "tls-auth-agent", "--executors", "builtin"),
        *ca,
        env={"CPA_AGENT_TOKEN": token},
    )
    agent.wait_for_line(CONNECTED, START_TIMEOUT_S)
    todos = tmp_path / "todos.yaml"
    todos.write_text("- {id: hello, action: noop}\n")
    submit = start_cli("submit", "--server", address, *ca, "--todos", str(todos), "--watch")
    lines = submit.rest_of_output(RUN_TIMEOUT_S)
    assert submit.exit_code(RUN_TIMEOUT_S) == 0, submit.report()
    assert re.match(r"^job \S+ SUCCEEDED in ", lines[-1]), lines

    # No key to send (no local key file there): the TLS connection works, the call does not.
    anonymous = start_cli(
        "agents", "--server", address, *ca, env={"CPA_DATA_DIR": str(tmp_path / "elsewhere")}
    )
    assert anonymous.exit_code(RUN_TIMEOUT_S) == 2
    assert "UNAUTHENTICATED" in anonymous.stderr()
    server.terminate()
    assert server.exit_code(RUN_TIMEOUT_S) == 0
