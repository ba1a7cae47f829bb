"""What a failed browser op reports: codes, retryability, and messages with no secret in them.

Codes (TaskError.code; a retry policy can match them):
- ELEMENT_NOT_FOUND      no element matched within the op's timeout (retryable: a timeout)
- ELEMENT_NOT_ACTIONABLE an element matched but never became visible/enabled/editable (retryable)
- ELEMENT_STILL_PRESENT  wait_for hidden/detached: the element stayed (retryable)
- SELECTOR_AMBIGUOUS     the selector matched several elements where one is needed (not retryable)
- NAVIGATION_FAILED      goto failed: unreachable, timed out (retryable), HTTP 4xx (not)
- DOWNLOAD_FAILED        no download started, or it broke off (retryable)
- DOWNLOAD_TOO_LARGE     the file is larger than CPA_BROWSER_MAX_DOWNLOAD_BYTES (not retryable)
- VERIFY_FAILED          the page is not as the verify op expects (not retryable: a wrong
                         password page stays wrong)
- BROWSER_UNAVAILABLE    Chromium would not start (retryable)
- BROWSER_CLOSED         the browser or page went away during the op (retryable: it relaunches)
- BROWSER_BUSY           every session slot is in use (retryable)
- SCREENSHOT_FAILED      Chromium would not capture the page's evidence, tried 3 times (retryable)
- OP_FAILED              Playwright refused the op (an element of the wrong kind...; not retryable)
- INVALID_PARAMS         params the page showed to be wrong (an unknown key name; not retryable)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, quote_plus

from playwright._impl._errors import TargetClosedError  # pinned playwright; not re-exported
from playwright.async_api import Error as PlaywrightError

from cpa_agent.executors.base import ExecutorError

ELEMENT_NOT_FOUND = "ELEMENT_NOT_FOUND"
ELEMENT_NOT_ACTIONABLE = "ELEMENT_NOT_ACTIONABLE"
ELEMENT_STILL_PRESENT = "ELEMENT_STILL_PRESENT"
SELECTOR_AMBIGUOUS = "SELECTOR_AMBIGUOUS"
NAVIGATION_FAILED = "NAVIGATION_FAILED"
DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
DOWNLOAD_TOO_LARGE = "DOWNLOAD_TOO_LARGE"
VERIFY_FAILED = "VERIFY_FAILED"
BROWSER_UNAVAILABLE = "BROWSER_UNAVAILABLE"
BROWSER_CLOSED = "BROWSER_CLOSED"
BROWSER_BUSY = "BROWSER_BUSY"
OP_FAILED = "OP_FAILED"
SCREENSHOT_FAILED = "SCREENSHOT_FAILED"

_MAX_DETAIL_CHARS = 300
_MASK = "***"


class Scrubber:
    """The secret values one action resolved, and every text it sends out with them masked.

    Messages, details, outputs and DOM excerpts go through `scrub`: a page that echoes the
    password, or a Playwright message quoting what it typed, does not carry it off the agent."""

    def __init__(self) -> None:
        self._values: list[str] = []

    def add(self, value: str) -> None:
        if not value:
            return
        # Also as a URL carries it (a form sent with GET, a link the page built from it).
        for form in {value, quote(value, safe=""), quote_plus(value, safe="")}:
            if form not in self._values:
                self._values.append(form)
        # Longest first, so a secret that contains another is masked whole.
        self._values.sort(key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, _MASK)
        return text

    def scrub_value(self, value: Any) -> Any:
        """`value` (JSON: str, list, dict, number) with every string scrubbed."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, list):
            return [self.scrub_value(item) for item in value]
        if isinstance(value, dict):
            return {self.scrub(str(k)): self.scrub_value(v) for k, v in value.items()}
        return value

    def error(self, error: ExecutorError) -> ExecutorError:
        """The same error with its message and details scrubbed."""
        return ExecutorError(
            error.code,
            self.scrub(error.message),
            retryable=error.retryable,
            details=self.scrub_value(error.details),
        )


def first_line(error: BaseException) -> str:
    """Playwright's message without its call log, bounded: the call log quotes what it typed."""
    text = (error.message if isinstance(error, PlaywrightError) else str(error)).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line[:_MAX_DETAIL_CHARS]


def is_closed(error: BaseException) -> bool:
    """The page, context or browser the op used is gone (crashed, or closed under it)."""
    return isinstance(error, TargetClosedError) or (
        isinstance(error, PlaywrightError) and "has been closed" in error.message
    )


def is_ambiguous(error: BaseException) -> bool:
    return isinstance(error, PlaywrightError) and "strict mode violation" in error.message


def closed(error: BaseException) -> ExecutorError:
    return ExecutorError(
        BROWSER_CLOSED,
        f"the browser page went away during the op ({first_line(error)}); the next attempt "
        "runs in a relaunched browser",
        retryable=True,
    )


def ambiguous(what: str, error: BaseException) -> ExecutorError:
    return ExecutorError(
        SELECTOR_AMBIGUOUS,
        f"{what} matched more than one element; make the selector match one ({first_line(error)})",
        retryable=False,
    )


def op_failed(error: BaseException) -> ExecutorError:
    """An error Playwright raised that no op-specific rule explains."""
    if is_closed(error):
        return closed(error)
    return ExecutorError(OP_FAILED, first_line(error), retryable=False)
