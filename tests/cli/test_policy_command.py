"""`cpa policy check` as a process: decisions explained, exit 0 allowed / 1 refused / 2 invalid;
and `cpa serve` refusing to start on a broken policy file, naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import StartCli

TIMEOUT_S = 30.0

POLICY = """\
urls:
  allow: [portal.example.com]
mail:
  allow_domains: [example.com]
pii:
  default_action: refuse
  rules:
    - field: params.to
      detectors: [email]
      action: allow
    - field: params.body
      action: redact
"""

ALLOWED_TODOS = """\
- id: login
  action: playwright
  params: {op: goto, url: "https://portal.example.com/login"}
- id: mail
  action: send_mail
  params:
    to: [anna@example.com]
    body: "please pay to DE89 3704 0044 0532 0130 00"
"""

REFUSED_TODOS = (
    ALLOWED_TODOS
    + """\
- id: leak
  action: send_mail
  params:
    to: [anna@example.com, spy@evil.net]
"""
)


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return name


def test_allowed_plan_exits_0_and_shows_masked_pii(start_cli: StartCli, tmp_path: Path) -> None:
    policy, todos = write(tmp_path, "acme.yaml", POLICY), write(tmp_path, "p.yaml", ALLOWED_TODOS)
    process = start_cli("policy", "check", policy, "--todos", todos)
    assert process.exit_code(TIMEOUT_S) == 0, process.report()
    out = "\n".join(process.rest_of_output(TIMEOUT_S))
    assert "host 'portal.example.com' is allowed" in out
    assert "REDACT    mail   params.body" in out
    assert "DE***********************00" in out  # masked sample
    assert "3704" not in out  # never the value
    assert out.splitlines()[-1] == "allowed"


def test_refused_plan_exits_1_naming_todo_rule_and_field(
    start_cli: StartCli, tmp_path: Path
) -> None:
    policy, todos = write(tmp_path, "acme.yaml", POLICY), write(tmp_path, "p.yaml", REFUSED_TODOS)
    process = start_cli("policy", "check", policy, "--todos", todos, "--json")
    assert process.exit_code(TIMEOUT_S) == 1, process.report()
    report = json.loads("\n".join(process.rest_of_output(TIMEOUT_S)))
    assert report["allowed"] is False
    refused = [d for d in report["decisions"] if d["decision"] == "refuse"]
    assert [(d["todo"], d["field"], d["rule"]) for d in refused] == [
        ("leak", "params.to[1]", "mail.allow_domains")
    ]
    redacted = next(d for d in report["decisions"] if d["decision"] == "redact")
    assert redacted["pii"] == [
        {"kind": "iban", "sample": "DE***********************00", "label": "[REDACTED:IBAN]"}
    ]


def test_request_text_and_callback_url(start_cli: StartCli, tmp_path: Path) -> None:
    policy = write(tmp_path, "acme.yaml", POLICY + "callback_urls:\n  allow: [hooks.example]\n")
    todos = write(tmp_path, "p.yaml", "- {id: a, action: noop}\n")
    process = start_cli(
        "policy", "check", policy, "--todos", todos, "--text", "card 4111 1111 1111 1111",
        "--callback-url", "https://hooks.example/cb",
    )  # fmt: skip
    assert process.exit_code(TIMEOUT_S) == 1, process.report()
    out = "\n".join(process.rest_of_output(TIMEOUT_S))
    assert "refused: request.text: card found; refuse (rule pii.default_action)" in out
    assert "host 'hooks.example' is allowed" in out


def test_invalid_files_exit_2_with_file_and_line(start_cli: StartCli, tmp_path: Path) -> None:
    todos = write(tmp_path, "p.yaml", ALLOWED_TODOS)
    broken = write(tmp_path, "broken.yaml", "urls:\n  allow: [ok.example]\n  deny: [x]\n")
    process = start_cli("policy", "check", broken, "--todos", todos)
    assert process.exit_code(TIMEOUT_S) == 2
    assert "broken.yaml:3: field 'urls.deny': unknown field" in process.stderr()

    missing = start_cli("policy", "check", "nope.yaml", "--todos", todos)
    assert missing.exit_code(TIMEOUT_S) == 2
    assert "cannot read the policy nope.yaml" in missing.stderr()

    policy = write(tmp_path, "acme.yaml", POLICY)
    bad_todos = write(tmp_path, "bad.yaml", "- id: a\n  action: noop\n  paramz: {}\n")
    process = start_cli("policy", "check", policy, "--todos", bad_todos)
    assert process.exit_code(TIMEOUT_S) == 2
    assert "bad.yaml:3" in process.stderr()


def test_serve_refuses_to_start_on_a_broken_policy(start_cli: StartCli, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "acme.yaml").write_text("actions:\n  deny: [uia]\nsurprise: 1\n")
    server = start_cli(
        "serve", "--listen", "127.0.0.1:0", "--data-dir", "data",
        env={"CPA_POLICY_DIR": str(policies)},
    )  # fmt: skip
    assert server.exit_code(TIMEOUT_S) != 0
    assert "acme.yaml:3: field 'surprise': unknown field" in server.stderr()
