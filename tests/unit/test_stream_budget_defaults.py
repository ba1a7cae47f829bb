"""The two ends of the agent stream ship with budgets that agree (see docs/CONFIGURATION.md,
"Message sizes on the agent stream"): out of the box, nothing one sends is refused by the other."""

from __future__ import annotations

from cpa_agent import AgentSettings
from cpa_scheduler.settings import Settings


def test_the_agents_defaults_match_the_servers() -> None:
    agent = AgentSettings.model_fields
    server = Settings.model_fields
    # What the server sends at most, the agent accepts.
    assert agent["max_receive_bytes"].default == server["max_assignment_bytes"].default
    # What the agent sends to a server that names no budget, the server accepts.
    assert agent["max_report_bytes"].default == server["max_request_bytes"].default
