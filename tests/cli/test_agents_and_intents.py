"""`cpa agents` over a real server, `cpa agent` loading a user's executor package through its
entry point, and `cpa intents list|show` reading the catalog the server's setting names."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from cpa_cli.main import main
from tests.fixtures.dists import make_shout_distribution

from .conftest import CONNECTED, START_TIMEOUT_S, SharedServer, StartCli, start_server

JOB_TIMEOUT_S = 30.0


def cpa(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_agents_lists_the_connected_agent_as_a_table_and_as_json(
    capsys: pytest.CaptureFixture[str], shared_server: SharedServer, server_address: str
) -> None:
    code, out, err = cpa(capsys, "agents")

    assert (code, err) == (0, "")
    assert out[0].split() == [
        "AGENT",
        "NAME",
        "TENANT",
        "STATE",
        "FREE",
        "ACTIONS",
        "CAPABILITIES",
        "LABELS",
    ]
    [row] = [line.split() for line in out[1:] if line.startswith(shared_server.agent_id)]
    assert row[2:4] == ["default", "CONNECTED"]
    assert re.fullmatch(r"\d+/8", row[4])
    assert row[5] == "echo,fail,noop,wait"

    code, out, _ = cpa(capsys, "agents", "--output", "json")

    assert code == 0
    agents = {agent["agent_id"]: agent for agent in json.loads("\n".join(out))}
    agent = agents[shared_server.agent_id]
    assert agent["capabilities"]["actions"] == ["echo", "fail", "noop", "wait"]
    assert agent["capabilities"]["slots"] == 8
    assert agent["state"] == "AGENT_STATE_CONNECTED"


def test_agents_says_when_the_filter_leaves_none(
    capsys: pytest.CaptureFixture[str], server_address: str
) -> None:
    code, out, _ = cpa(capsys, "agents", "--filter", 'actions:"uia"')

    assert (code, out) == (0, ["no agents connected"])


def test_cpa_agent_offers_and_runs_an_installed_packages_executor(
    capsys: pytest.CaptureFixture[str], start_cli: StartCli, tmp_path: Path
) -> None:
    site = make_shout_distribution(tmp_path / "site")
    python_path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    _, address = start_server(start_cli)
    agent = start_cli(
        "agent",
        "--server",
        address,
        "--agent-id",
        "shouter",
        # This package's and ours: the browser, where Chromium is, would add its actions.
        env={"PYTHONPATH": python_path, "CPA_AGENT_EXECUTORS": "builtin,shout,desktop"},
    )
    agent.wait_for_line(CONNECTED, START_TIMEOUT_S)

    code, out, _ = cpa(capsys, "agents", "--server", address, "-o", "json")

    assert code == 0
    [listed] = json.loads("\n".join(out))
    assert listed["capabilities"]["actions"] == ["echo", "fail", "noop", "shout", "wait"]
    assert listed["capabilities"]["capabilities"] == ["voice:loud"]
    assert "executors 'desktop' unavailable: UI Automation needs Windows" in agent.stderr()

    (tmp_path / "shout.yaml").write_text(
        "- {id: greet, action: shout, params: {word: hello}}\n"
        "- {id: bad, action: shout, depends_on: [greet], params: {words: hello}}\n",
        encoding="utf-8",
    )
    submit = start_cli("submit", "--todos", "shout.yaml", "--watch", "--server", address)
    lines = submit.rest_of_output(JOB_TIMEOUT_S)
    assert submit.exit_code(5.0) == 1, submit.report()
    job_id = lines[0]
    code, out, _ = cpa(capsys, "jobs", "get", job_id, "--server", address, "--json")
    job = json.loads("\n".join(out))
    greet, bad = job["tasks"]
    assert greet["outputs"] == {"shouted": "HELLO!"}
    error = bad["attempts"][0]["error"]
    assert error["code"] == "INVALID_PARAMS"
    assert error["reason"] == "ERROR_REASON_INVALID_PARAMS"
    assert len(bad["attempts"]) == 1  # not retried


def test_cpa_agent_refuses_an_entry_point_nobody_offers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cpa(capsys, "agent", "--server", "127.0.0.1:1", "--executors", "builtin,gui")

    assert (code, out) == (2, [])
    assert err.startswith("cpa: CPA_AGENT_EXECUTORS names gui, which no installed package offers")


CATALOG = """\
intents:
  - name: greet_everyone
    description: Say hello loudly.
    patterns:
      - keywords: [greet]
    parameters:
      word: {default: hello, description: What to shout}
    tasks:
      - {id: shout, action: shout, params: {word: "{{ word }}"}}
      - id: login
        action: playwright
        depends_on: [shout]
        credential_refs: {portal: "env:PORTAL_PASSWORD"}
"""


def test_intents_read_the_catalog_the_server_setting_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = tmp_path / "intents.yaml"
    catalog.write_text(CATALOG, encoding="utf-8")
    monkeypatch.setenv("CPA_INTENTS_PATH", str(catalog))

    code, out, _ = cpa(capsys, "intents", "list")

    assert code == 0
    assert out[0] == f"catalog {catalog}"
    assert out[1].split() == ["INTENT", "ACTIONS", "DESCRIPTION"]
    assert out[2].split() == ["greet_everyone", "playwright,shout", "Say", "hello", "loudly."]

    code, out, _ = cpa(capsys, "intents", "show", "greet_everyone")

    assert code == 0
    text = "\n".join(out)
    assert f"defined at  {catalog}:2" in text
    assert "  keywords: greet" in text
    assert re.search(r"^  word\s+no\s+\"hello\"\s+What to shout$", text, re.MULTILINE)
    assert re.search(r"^  login\s+playwright\s+shout\s+-\s+portal$", text, re.MULTILINE)

    code, out, _ = cpa(capsys, "intents", "show", "greet_everyone", "-o", "json")

    detail = json.loads("\n".join(out))
    assert detail["tasks"][1]["credential_purposes"] == ["portal"]
    assert detail["parameters"] == [
        {"name": "word", "required": False, "default": "hello", "description": "What to shout"}
    ]


def test_intents_show_of_an_unknown_intent_names_the_known_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = tmp_path / "intents.yaml"
    catalog.write_text(CATALOG, encoding="utf-8")
    monkeypatch.setenv("CPA_INTENTS_PATH", str(catalog))

    code, out, err = cpa(capsys, "intents", "show", "greet")

    assert (code, out) == (2, [])
    assert err == f"cpa: no intent 'greet' in {catalog} (known: greet_everyone)\n"


def test_intents_with_a_missing_catalog_say_which_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPA_INTENTS_PATH", str(tmp_path / "nowhere.yaml"))

    code, _, err = cpa(capsys, "intents", "list")

    assert code == 2
    assert err == textwrap.dedent(
        f"""\
        cpa: cannot read the intent catalog {tmp_path / "nowhere.yaml"}: No such file or directory
        """
    )
