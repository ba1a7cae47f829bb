"""The browser executor on Playwright and Debian's Chromium (docs/BROWSER.md).

`executors()` is the factory the agent loads (entry point `browser` of group `cpa.executors`):
the `playwright` action and the UI actions click, type and wait_for, sharing one browser.
"""

from __future__ import annotations

from cpa_agent.executors.browser.executor import (
    CAPABILITY,
    BrowserActions,
    PlaywrightExecutor,
    UiActionExecutor,
    browser_executors,
)
from cpa_agent.executors.browser.params import PlaywrightParams, Selector
from cpa_agent.executors.browser.pool import BrowserPool
from cpa_agent.executors.browser.settings import BrowserSettings
from cpa_agent.executors.discovery import ExecutorUnavailable


def chromium_missing(settings: BrowserSettings) -> str | None:
    """Why the configured Chromium cannot be launched, or None when it is there."""
    return settings.chromium_missing()


def executors() -> list[PlaywrightExecutor | UiActionExecutor]:
    """The browser executors, or ExecutorUnavailable when Chromium is missing (the agent then
    offers no browser action and logs the reason, which names the command that installs it)."""
    settings = BrowserSettings()
    reason = chromium_missing(settings)
    if reason is not None:
        raise ExecutorUnavailable(reason)
    return browser_executors(settings)


__all__ = [
    "CAPABILITY",
    "BrowserActions",
    "BrowserPool",
    "BrowserSettings",
    "PlaywrightExecutor",
    "PlaywrightParams",
    "Selector",
    "UiActionExecutor",
    "browser_executors",
    "chromium_missing",
    "executors",
]
