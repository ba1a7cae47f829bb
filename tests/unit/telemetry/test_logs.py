"""Log records as structlog renders them (cpa_client.telemetry, cpa_scheduler.telemetry.logs):
`logging` calls become JSON objects with the bound job context, PII redacted by the policy's
detectors (cpa_client.pii) whoever configured logging."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from cpa_client import telemetry
from cpa_scheduler.telemetry.logs import job_context

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def lines() -> io.StringIO:
    """Logging configured to write JSON lines here (tests/conftest.py's autouse fixture puts
    the root logger back after the test)."""
    stream = io.StringIO()
    telemetry.configure_logging("DEBUG", json_lines=True, stream=stream)
    return stream


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_logging_call_in_a_job_context_names_the_job_and_its_trace(
    lines: io.StringIO,
) -> None:
    with job_context(
        "acme", "job-1", task_id="fetch", attempt=2, trace_context={"traceparent": TRACEPARENT}
    ):
        logging.getLogger("cpa_scheduler.x").warning("task %s retried", "fetch")
    logging.getLogger("cpa_scheduler.x").info("outside")

    inside, outside = records(lines)
    assert {k: inside[k] for k in ("event", "level", "logger", "tenant", "job_id")} == {
        "event": "task fetch retried",
        "level": "warning",
        "logger": "cpa_scheduler.x",
        "tenant": "acme",
        "job_id": "job-1",
    }
    assert (inside["task_id"], inside["attempt"]) == ("fetch", 2)
    assert inside["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "job_id" not in outside
    assert "trace_id" not in outside


def test_pii_and_exceptions_are_rendered_redacted(lines: io.StringIO) -> None:
    try:
        raise ValueError("bad account DE89 3704 0044 0532 0130 00")
    except ValueError:
        logging.getLogger("cpa").exception("paying %s failed", "DE89370400440532013000")

    (record,) = records(lines)
    text = json.dumps(record)
    assert "DE89" not in text
    assert record["event"] == "paying [REDACTED:IBAN] failed"
    assert "ValueError: bad account [REDACTED:IBAN]" in str(record["exception"])


def test_a_job_without_a_trace_gets_no_trace_id(lines: io.StringIO) -> None:
    with job_context("acme", "job-2", trace_context={}):
        logging.getLogger("cpa").info("hello")
    (record,) = records(lines)
    assert record["job_id"] == "job-2"
    assert "trace_id" not in record


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_a_terminal_gets_readable_lines_and_anything_else_json(terminal: bool) -> None:
    stream = _Terminal() if terminal else io.StringIO()
    telemetry.configure_logging("INFO", stream=stream)
    with job_context("acme", "job-3"):
        logging.getLogger("cpa.x").warning("paying %s failed", "DE89370400440532013000")

    text = stream.getvalue()
    assert "DE89" not in text
    (line,) = text.splitlines()
    if terminal:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
        assert not line.startswith("{")
        assert "[warning  ] paying [REDACTED:IBAN] failed" in plain
        assert "job_id=job-3" in plain
        assert "tenant=acme" in plain
        assert plain != line  # coloured for a terminal
    else:
        record = json.loads(line)
        assert (record["event"], record["job_id"]) == ("paying [REDACTED:IBAN] failed", "job-3")
