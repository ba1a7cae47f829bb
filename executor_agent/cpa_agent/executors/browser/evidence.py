"""Evidence of a browser action: a screenshot after every op, and what a failure saw.

Names are stable and unique within the task: `NN-<op>.png` (NN = the op's number, 01..50),
`NN-<op>-error.png` and `error-dom.html` when op NN failed. A retried attempt writes the same
names, which replace the earlier attempt's (ArtifactAccess.save).
"""

from __future__ import annotations

import asyncio
import logging

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from cpa_agent.executors.base import ArtifactAccess, ExecutorError
from cpa_agent.executors.browser.errors import SCREENSHOT_FAILED, Scrubber, first_line

logger = logging.getLogger(__name__)

PNG = "image/png"
HTML = "text/html"
DOM_ARTIFACT = "error-dom.html"
# Evidence of a failure must not hang the report of it: each capture gets this long.
_CAPTURE_TIMEOUT_S = 5.0
_CAPTURE_TRIES = 3
_TRANSIENT_CAPTURE = "Unable to capture screenshot"


def step_name(index: int, op: str, suffix: str = "") -> str:
    """`03-click.png`, `03-click-error.png`."""
    return f"{index:02d}-{op}{suffix}.png"


class Evidence:
    """Stores an action's screenshots and remembers every artifact name it saved, in order."""

    def __init__(
        self,
        artifacts: ArtifactAccess,
        scrubber: Scrubber,
        *,
        dom_excerpt_chars: int,
        dom_artifact_bytes: int,
    ) -> None:
        self._artifacts = artifacts
        self._scrubber = scrubber
        self._dom_excerpt_chars = dom_excerpt_chars
        self._dom_artifact_bytes = dom_artifact_bytes
        self.names: list[str] = []

    async def save(self, name: str, media_type: str, data: bytes) -> None:
        await self._artifacts.save(name, media_type, data)
        if name not in self.names:
            self.names.append(name)

    async def screenshot(
        self, page: Page, name: str, *, timeout_s: float, full_page: bool = False
    ) -> None:
        """Stores a PNG of the page as `name`; a failure to take it is the op's failure
        (SCREENSHOT_FAILED, retryable), after _CAPTURE_TRIES tries."""
        for attempt in range(1, _CAPTURE_TRIES + 1):
            try:
                png = await page.screenshot(
                    type="png", timeout=timeout_s * 1000, full_page=full_page
                )
                break
            except PlaywrightError as error:
                # Chromium sometimes answers "Unable to capture screenshot" while it is busy
                # (a loaded machine, a page still painting): it passes; other errors do not.
                if _TRANSIENT_CAPTURE not in error.message:
                    raise
                if attempt == _CAPTURE_TRIES:
                    raise ExecutorError(
                        SCREENSHOT_FAILED,
                        f"no screenshot of the page after {attempt} tries: {first_line(error)}",
                        retryable=True,
                    ) from None
                logger.info("screenshot %s: %s; trying again", name, first_line(error))
        await self.save(name, PNG, png)

    async def failure(self, page: Page, index: int, op: str, error: ExecutorError) -> ExecutorError:
        """`error` with what the page showed when op `index` failed: a screenshot (artifact),
        the URL, and an excerpt of its HTML (details; the first CPA_BROWSER_DOM_ARTIFACT_BYTES
        also as artifact error-dom.html). Best effort: a capture that fails is named in the
        details, never hides the op's error. Everything is scrubbed of secrets."""
        details = dict(error.details)
        details.update(op_index=index, op=op)
        if page.is_closed():
            details["evidence"] = "the page was closed; nothing captured"
            return self._scrubber.error(_with_details(error, details))
        details["url"] = page.url
        shot = step_name(index, op, "-error")
        try:
            await self.screenshot(page, shot, timeout_s=_CAPTURE_TIMEOUT_S)
            details["screenshot"] = shot
        except (PlaywrightError, TimeoutError) as capture_error:
            details["screenshot_error"] = first_line(capture_error)
        except ExecutorError as save_error:
            details["screenshot_error"] = save_error.message
        try:
            html = await asyncio.wait_for(page.content(), _CAPTURE_TIMEOUT_S)
        except (PlaywrightError, TimeoutError) as capture_error:
            details["dom_error"] = first_line(capture_error)
        else:
            html = self._scrubber.scrub(html)
            details["dom_excerpt"] = html[: self._dom_excerpt_chars]
            if self._dom_artifact_bytes > 0:
                data = html.encode("utf-8", "replace")[: self._dom_artifact_bytes]
                try:
                    await self.save(DOM_ARTIFACT, HTML, data)
                    details["dom_artifact"] = DOM_ARTIFACT
                except ExecutorError as save_error:
                    details["dom_error"] = save_error.message
        details["artifacts"] = list(self.names)
        logger.info(
            "browser op %d (%s) failed with %s at %s",
            index,
            op,
            error.code,
            self._scrubber.scrub(page.url),
        )
        # The scheduler keeps details only up to its CPA_TASK_ERROR_DETAILS_MAX_BYTES (a large
        # DOM excerpt may pass it): where the page was and what was stored go in the message too.
        stored = [name for name in (details.get("screenshot"), details.get("dom_artifact")) if name]
        message = f"{error.message} (page {page.url}"
        message += f"; evidence {', '.join(map(str, stored))})" if stored else ")"
        return self._scrubber.error(_with_details(error, details, message))


def _with_details(
    error: ExecutorError, details: dict[str, object], message: str | None = None
) -> ExecutorError:
    return ExecutorError(
        error.code,
        error.message if message is None else message,
        retryable=error.retryable,
        details=details,
    )
