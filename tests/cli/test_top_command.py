"""`cpa top` against a real `cpa serve --with-agent`: one refresh (--once) shows the queued work
by requirement with the agents that serve it, the agent with its free slots, and the newest
failure; a bad interval is a usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpa_cli.main import main

from .conftest import SharedServer


def cpa(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_one_refresh_shows_queue_depth_agents_and_the_newest_failure(
    capsys: pytest.CaptureFixture[str],
    shared_server: SharedServer,
    server_address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich's width off a terminal: no cut columns
    waiting = tmp_path / "waiting.yaml"
    waiting.write_text(
        "- {id: w1, action: top_nobody_serves}\n- {id: w2, action: top_nobody_serves}\n"
    )
    failing = tmp_path / "failing.yaml"
    failing.write_text("- {id: f, action: fail, params: {code: TOP_PROBE_FAILED}}\n")
    code, out, _ = cpa(capsys, "submit", "--todos", str(waiting))
    assert code == 0
    waiting_id = out.split()[0]
    code, out, _ = cpa(capsys, "submit", "--todos", str(failing), "--watch")
    assert code == 1  # the job failed, as meant
    failed_id = out.split()[0]

    code, out, err = cpa(capsys, "top", "--once")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert any(f"jobs on {server_address}" in line for line in lines)
    [queued] = [line.split("│") for line in lines if "top_nobody_serves" in line]
    # Both tasks wait (no dependencies, no agent), and no agent serves the action.
    assert [cell.strip() for cell in queued if cell.strip()] == ["top_nobody_serves", "2", "0"]
    [agent] = [line for line in lines if shared_server.agent_id in line]
    assert "/8" in agent
    assert "echo" in agent
    [failure] = [line for line in lines if failed_id in line]
    assert "TOP_PROBE_FAILED" in failure
    assert waiting_id not in out  # not failed: only in the counts

    code, _, err = cpa(capsys, "jobs", "cancel", waiting_id)
    assert code == 0, err


def test_a_non_positive_interval_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], server_address: str
) -> None:
    code, out, err = cpa(capsys, "top", "--interval", "0")
    assert (code, out) == (2, "")
    assert "--interval must be > 0" in err
