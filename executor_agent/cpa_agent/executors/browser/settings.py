"""Settings of the browser executor, read from the environment (prefix CPA_BROWSER_).

Separate from AgentSettings (CPA_AGENT_*) because they belong to this executor: an agent without
the browser executor reads none of them. docs/CONFIGURATION.md mirrors this class.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Debian's `chromium` package: /usr/bin/chromium is a shell wrapper around the real binary, which
# prints a harmless warning when Playwright starts it; the binary itself is preferred.
DEBIAN_CHROMIUM_BINARY = Path("/usr/lib/chromium/chromium")
DEBIAN_CHROMIUM_WRAPPER = Path("/usr/bin/chromium")

# Chromium resolves names in the background (safe browsing, component updates...): map every
# name but loopback to "not found", so the agent only reaches hosts by address or localhost.
HOST_RESOLVER_RULES = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"


INSTALL_HINT = "install it with `make chromium` (as root: apt-get install -y chromium)"


def default_executable() -> Path:
    """The Chromium binary of Debian's package when present, else its wrapper."""
    return DEBIAN_CHROMIUM_BINARY if DEBIAN_CHROMIUM_BINARY.exists() else DEBIAN_CHROMIUM_WRAPPER


class BrowserSettings(BaseSettings):
    """Browser executor configuration: `BrowserSettings()` reads CPA_BROWSER_* variables."""

    model_config = SettingsConfigDict(env_prefix="CPA_BROWSER_", extra="forbid")

    executable: Path = Field(
        default_factory=default_executable,
        description="Chromium binary Playwright launches (never Playwright's own download).",
    )
    headless: bool = Field(default=True, description="Run Chromium without a window.")
    extra_args: list[str] = Field(
        default_factory=list,
        description="More Chromium command-line flags (JSON list), after the built-in ones.",
    )
    resolve_hosts: bool = Field(
        default=False,
        description="Let Chromium resolve host names; by default only localhost and addresses "
        "are reachable (the host resolver rules of the recipes), true for real portals.",
    )
    op_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="Default time one op may take (its own `timeout_s` wins); always bounded "
        "by the task's timeout.",
    )
    launch_timeout_s: float = Field(
        default=30.0, gt=0, description="Time Chromium may take to start."
    )
    evidence_reserve_s: float = Field(
        default=1.0,
        ge=0,
        description="Time kept before the task's deadline to store the evidence of a failed "
        "op (screenshot, URL, DOM): an op's timeout is cut short by this much near the end.",
    )
    max_sessions: int = Field(
        default=64,
        ge=1,
        description="Browser contexts (sessions) kept open at once; a new one beyond closes the "
        "one unused the longest (a busy one never).",
    )
    session_idle_s: float = Field(
        default=3600.0,
        gt=0,
        description="A session unused this long is closed (the scheduler normally closes it "
        "when its job or last task ends).",
    )
    max_download_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=1,
        description="Largest download kept; a larger one fails with DOWNLOAD_TOO_LARGE.",
    )
    max_text_chars: int = Field(
        default=16384,
        ge=1,
        description="Longest text one extract_text returns; longer text is cut to this.",
    )
    dom_excerpt_chars: int = Field(
        default=2000,
        ge=0,
        description="Characters of the page's HTML put in a failed op's error details.",
    )
    dom_artifact_bytes: int = Field(
        default=512 * 1024,
        ge=0,
        description="Most bytes of the page's HTML stored as artifact error-dom.html when an op "
        "fails (0: none).",
    )

    def chromium_missing(self) -> str | None:
        """Why the configured Chromium cannot be launched, or None when it is there."""
        path = self.executable
        if not path.is_file() or not os.access(path, os.X_OK):
            return f"Chromium not found at {path} (CPA_BROWSER_EXECUTABLE); {INSTALL_HINT}"
        return None

    def launch_args(self) -> list[str]:
        """Chromium flags: the recipes' resolver rules (unless resolve_hosts), then extra_args."""
        args = [] if self.resolve_hosts else [HOST_RESOLVER_RULES]
        return [*args, *self.extra_args]
