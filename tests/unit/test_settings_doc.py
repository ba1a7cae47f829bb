"""Every setting is documented in docs/CONFIGURATION.md, and nothing there is stale."""

from __future__ import annotations

import re
from pathlib import Path

from cpa_cli.common import TLS_ENV, TLS_OPTIONS
from cpa_scheduler.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"


def test_every_scheduler_setting_is_documented_and_only_those() -> None:
    documented = set(re.findall(r"`(CPA_[A-Z_]+)`", DOC.read_text()))
    # The agent's and the executors' settings have their own tests (tests/agent,
    # tests/browser/test_settings.py, the mail settings test).
    others = ("CPA_AGENT_", "CPA_SERVER", "CPA_API_KEY", "CPA_MAIL_", "CPA_BROWSER_")
    # The CLI's TLS options (cpa_cli.common.TLS_OPTIONS): a client's, not the server's.
    cli_tls = {variable for _, variable, _ in TLS_OPTIONS} | {TLS_ENV}
    documented -= cli_tls
    documented = {name for name in documented if not name.startswith(others)}
    expected = {f"CPA_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected
