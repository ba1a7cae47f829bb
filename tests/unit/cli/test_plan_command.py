"""`cpa plan`: prints the task graph; unknown intents and bad input get exit codes and reasons."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cpa_cli.main import main

PORTAL_TEXT = "Download the invoice 42 from the portal and mail it to ap@example.com"


def test_text_prints_intent_steps_and_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", PORTAL_TEXT]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "intent      portal_download_and_mail"
    assert out[1] == "parameters  document=invoice 42, recipient=ap@example.com"
    assert "  step 1: login" in out
    assert "  step 3: send" in out
    send_line = next(line for line in out if line.lstrip().startswith("send "))
    assert send_line.endswith("[after download]")


def test_json_output_is_a_preview_plan_response(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--intent", "send_mail", "--param", "recipient=bob@example.com"]
    assert main([*args, "--param", "subject=Invoice", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["intent"] == "send_mail"
    assert [todo["action"] for todo in document["todos"]] == ["ACTION_TYPE_SEND_MAIL"]
    assert document["todos"][0]["params"]["to"] == "bob@example.com"
    assert document["batches"] == [{"task_ids": ["send"]}]


def test_unmatched_text_exits_3_with_candidates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "downlod invoice from portal"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("intent      unknown (no intent matched)\nclosest     portal_download")


def test_unknown_intent_name_exits_2_naming_reason_and_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", "--intent", "send_mial"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cpa: UNKNOWN_INTENT: unknown intent 'send_mial'")
    assert err.rstrip().endswith("(field intent.name)")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan"], "give either TEXT or --intent NAME"),
        (["plan", "x", "--intent", "send_mail"], "give either TEXT or --intent NAME"),
        (["plan", "x", "--param", "a=b"], "--param goes with --intent"),
        (["plan", "--intent", "send_mail", "--param", "novalue"], "needs KEY=VALUE"),
    ],
)
def test_bad_arguments_exit_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_broken_catalog_is_reported_with_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "intents.yaml"
    catalog.write_text("intents:\n  - name: x\n    description: [unclosed\n")
    monkeypatch.setenv("CPA_INTENTS_PATH", str(catalog))
    assert main(["plan", "anything"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cpa: INVALID_FIELD: {catalog}:")


def test_console_entry_point_runs() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "cpa_cli", "plan", PORTAL_TEXT],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("intent      portal_download_and_mail\n")
