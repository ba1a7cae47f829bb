"""`cpa demo`'s log lines: only warnings, as console lines, with PII redacted by the same
processor as every other process's (docs/OBSERVABILITY.md, "Logs"). The demo's run itself is
replaced by one that logs as a failing component would: what is under test is the logging the
command sets up around it."""

from __future__ import annotations

import logging

import pytest

from cpa_cli.demo import command
from cpa_cli.main import main

IBAN = "DE89370400440532013000"


def test_the_demos_warnings_are_redacted_and_its_info_lines_dropped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def component_logs(*, timeout_s: float, keep_data: bool) -> int:
        log = logging.getLogger("cpa_scheduler.engine")
        log.info("dispatched the refund step")
        log.warning("refund step failed: account %s refused", IBAN)
        return 0

    monkeypatch.setattr(command, "run_minimal", component_logs)

    assert main(["demo", "--minimal"]) == 0

    err = capsys.readouterr().err
    assert "refund step failed: account [REDACTED:IBAN] refused" in err, err
    assert IBAN not in err
    assert "dispatched the refund step" not in err
    assert not err.lstrip().startswith("{"), err  # console lines, not JSON
