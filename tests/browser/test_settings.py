"""The browser executor's settings: read from CPA_BROWSER_*, documented, and checked; the
factory says what to install when Chromium is missing."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from cpa_agent.executors.browser import (
    BrowserSettings,
    browser_executors,
    executors,
)
from cpa_agent.executors.browser.settings import HOST_RESOLVER_RULES
from cpa_agent.executors.discovery import ENTRY_POINT_GROUP, ExecutorUnavailable

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"


def test_every_browser_setting_is_documented_and_only_those() -> None:
    documented = set(re.findall(r"`(CPA_BROWSER_[A-Z_]+)`", DOC.read_text()))
    expected = {f"CPA_BROWSER_{name.upper()}" for name in BrowserSettings.model_fields}
    assert documented == expected


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPA_BROWSER_HEADLESS", "false")
    monkeypatch.setenv("CPA_BROWSER_OP_TIMEOUT_S", "2.5")
    monkeypatch.setenv("CPA_BROWSER_EXTRA_ARGS", '["--lang=de-DE"]')
    settings = BrowserSettings()
    assert settings.headless is False
    assert settings.op_timeout_s == 2.5
    assert settings.launch_args() == [HOST_RESOLVER_RULES, "--lang=de-DE"]
    assert BrowserSettings(resolve_hosts=True).launch_args() == ["--lang=de-DE"]


@pytest.mark.parametrize(
    "bad",
    [{"op_timeout_s": 0}, {"max_sessions": 0}, {"max_download_bytes": 0}, {"unknown": 1}],
)
def test_invalid_settings_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        BrowserSettings(**bad)  # type: ignore[arg-type]


def test_without_chromium_the_factory_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CPA_BROWSER_EXECUTABLE", str(tmp_path / "chromium"))
    with pytest.raises(ExecutorUnavailable) as caught:
        executors()
    assert caught.value.reason == (
        f"Chromium not found at {tmp_path / 'chromium'} (CPA_BROWSER_EXECUTABLE); install it "
        "with `make chromium` (as root: apt-get install -y chromium)"
    )


def test_an_executor_says_when_chromium_went_away(tmp_path: Path) -> None:
    binary = tmp_path / "chromium"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    playwright = browser_executors(BrowserSettings(executable=binary))[0]
    assert playwright.unavailable_reason() is None
    binary.unlink()
    assert playwright.unavailable_reason() == (
        f"Chromium not found at {binary} (CPA_BROWSER_EXECUTABLE); install it with "
        "`make chromium` (as root: apt-get install -y chromium)"
    )


def test_pyproject_registers_the_factory_in_the_entry_point_group() -> None:
    """The agent loads executors through the `cpa.executors` group (discovery.py): the entry
    point pyproject declares loads the four browser executors."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    value = pyproject["project"]["entry-points"][ENTRY_POINT_GROUP]["browser"]
    point = EntryPoint(name="browser", value=value, group=ENTRY_POINT_GROUP)
    loaded = point.load()()
    assert sorted(executor.action for executor in loaded) == [
        "click",
        "playwright",
        "type",
        "wait_for",
    ]
    assert all(executor.capabilities == ("browser:chromium",) for executor in loaded)
