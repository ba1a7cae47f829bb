"""Agent settings: environment, keyword overrides and validation."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from cpa_agent import AgentSettings


def test_environment_is_read_and_keywords_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPA_AGENT_SLOTS", "7")
    monkeypatch.setenv("CPA_AGENT_LABELS", '{"site": "berlin"}')
    monkeypatch.setenv("CPA_AGENT_SERVER", "scheduler:50051")

    settings = AgentSettings(server="127.0.0.1:1")

    assert settings.slots == 7
    assert settings.labels == {"site": "berlin"}
    assert settings.server == "127.0.0.1:1"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("CPA_AGENT_")]:
        monkeypatch.delenv(name)

    settings = AgentSettings()

    assert settings.server == "127.0.0.1:50051"
    assert settings.tenant == ""  # the token's tenant (or the server's default)
    assert settings.token.get_secret_value() == ""
    assert settings.slots == 4
    assert settings.agent_id
    assert (settings.reconnect_initial_backoff_s, settings.reconnect_max_backoff_s) == (0.1, 5.0)
    assert settings.drain_timeout_s == 30.0


@pytest.mark.parametrize(
    "bad",
    [
        {"slots": 0},
        {"reconnect_initial_backoff_s": 2.0, "reconnect_max_backoff_s": 1.0},
        {"unknown": 1},
    ],
)
def test_invalid_settings_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AgentSettings(**bad)  # type: ignore[arg-type]
