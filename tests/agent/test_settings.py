"""Agent settings: environment, keyword overrides and validation."""

from __future__ import annotations

import os
from pathlib import Path

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
        {"metrics_address": "9465"},
        {"metrics_address": "0.0.0.0:http"},
        {"metrics_address": "0.0.0.0:70000"},
    ],
)
def test_invalid_settings_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AgentSettings(**bad)  # type: ignore[arg-type]


def test_the_token_can_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.token"
    path.write_text("cpa_0123456789ab_secret\n")

    assert AgentSettings(token_file=path).token.get_secret_value() == "cpa_0123456789ab_secret"
    # A compose file's blank means unset.
    assert AgentSettings(token_file="").token_file is None


@pytest.mark.parametrize(
    ("content", "extra", "complaint"),
    [
        (None, {}, "cannot read it"),
        ("  \n", {}, "is empty"),
        ("cpa_0123456789ab_secret", {"token": "another"}, "token and token_file: give one"),
    ],
)
def test_a_token_file_that_gives_no_token_is_refused(
    tmp_path: Path, content: str | None, extra: dict[str, str], complaint: str
) -> None:
    path = tmp_path / "agent.token"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ValidationError, match=complaint):
        AgentSettings(token_file=path, **extra)  # type: ignore[arg-type]
