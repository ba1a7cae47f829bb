"""The agent's log lines as its own logging setup renders them (cpa_agent.telemetry.tracing,
which `cpa agent` and `python -m cpa_agent` call): PII redacted by the scheduler's rules, in the
message, its arguments, bound fields and exceptions alike (docs/OBSERVABILITY.md, "Logs")."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent.settings import AgentSettings
from cpa_agent.telemetry import tracing

IBAN = "DE89 3704 0044 0532 0130 00"
CARD = "4111 1111 1111 1111"
EMAIL = "erika.mustermann@example.org"
PHONE = "+49 30 1234567"
STEUER_ID = "86095742719"


@pytest.fixture
def configured() -> None:
    tracing.configure_logging(
        AgentSettings(agent_id="agent-1", log_level="INFO", log_format="json")
    )


@pytest.mark.usefixtures("configured")
def test_an_agent_line_with_pii_comes_out_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    assignment = pb.Assignment(job_id="job-1", tenant="acme", attempt=1)
    assignment.todo.id = "pay"
    with tracing.attempt_span(assignment, "browser.fill"):
        logging.getLogger("cpa_agent.executors.browser").warning(
            "portal answered for %s: card %s, call %s", EMAIL, CARD, PHONE
        )
        structlog.get_logger("cpa_agent.connection").info(
            "declined", fields={"iban": IBAN, "tax": [STEUER_ID]}
        )
    try:
        raise RuntimeError(f"transfer to {IBAN} failed")
    except RuntimeError:
        logging.getLogger("cpa_agent.connection").exception("attempt failed")

    text = capsys.readouterr().err
    for value in (IBAN, IBAN.replace(" ", ""), CARD, EMAIL, PHONE, STEUER_ID):
        assert value not in text
    portal, declined, failed = (json.loads(line) for line in text.splitlines())
    assert portal["event"] == (
        "portal answered for [REDACTED:EMAIL]: card [REDACTED:CARD], call [REDACTED:PHONE]"
    )
    assert (portal["job_id"], portal["task_id"], portal["attempt"]) == ("job-1", "pay", 1)
    assert declined["fields"] == {"iban": "[REDACTED:IBAN]", "tax": ["[REDACTED:STEUER_ID]"]}
    assert "RuntimeError: transfer to [REDACTED:IBAN] failed" in failed["exception"]


def test_a_terminal_gets_its_tracebacks_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    tracing.configure_logging(AgentSettings(agent_id="agent-1", log_format="console"))
    try:
        raise RuntimeError(f"mail to {EMAIL} bounced")
    except RuntimeError:
        logging.getLogger("cpa_agent.executors.mail").exception("sending failed")

    text = capsys.readouterr().err
    assert EMAIL not in text
    assert "RuntimeError: mail to [REDACTED:EMAIL] bounced" in text
    assert not text.startswith("{")
