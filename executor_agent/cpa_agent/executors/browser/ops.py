"""The ops of a browser action, each on the session's page (docs/BROWSER.md).

An op raises ExecutorError with a code that says what went wrong (errors.py); the executor adds
the evidence. Timeouts are explicit on every Playwright call: the op's own, cut to the task's
deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Download as PlaywrightDownload
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator, Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from cpa_agent.executors.base import ExecutionContext, ExecutorError
from cpa_agent.executors.browser import errors
from cpa_agent.executors.browser.errors import Scrubber, first_line
from cpa_agent.executors.browser.evidence import Evidence, step_name
from cpa_agent.executors.browser.params import (
    AnyOp,
    Click,
    Download,
    ExtractText,
    Fill,
    Goto,
    Press,
    Screenshot,
    Select,
    Selector,
    Type,
    Verify,
    WaitFor,
)
from cpa_agent.executors.browser.selectors import locate
from cpa_agent.executors.browser.settings import BrowserSettings
from cpa_agent.executors.params import INVALID_PARAMS

# Content that names its own type, checked before the file name: a PDF called invoice.bin is a PDF.
_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_TEXT_EXCERPT_CHARS = 200


@dataclass
class OpRun:
    """What one op needs besides the page: its place, time, the task, and where results go."""

    ctx: ExecutionContext
    settings: BrowserSettings
    scrubber: Scrubber
    evidence: Evidence
    index: int
    path: str
    """The op's params path, for errors that name a field ("params.steps[2]")."""
    timeout_s: float
    texts: dict[str, str] = field(default_factory=dict)
    downloads: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def timeout_ms(self) -> float:
        return self.timeout_s * 1000

    async def secret(self, purpose: str) -> str:
        value = await self.ctx.secret(purpose)
        self.scrubber.add(value)
        return value


async def run_op(page: Page, op: AnyOp, run: OpRun) -> None:
    """Runs `op`; raises ExecutorError (Playwright's own errors are translated here)."""
    selector = getattr(op, "selector", None)
    try:
        await _DISPATCH[type(op)](page, op, run)
    except ExecutorError:
        raise
    except PlaywrightTimeoutError as error:
        if selector is None:
            raise errors.op_failed(error) from None
        raise await _element_timeout(page, op, selector, run) from None
    except PlaywrightError as error:
        if errors.is_ambiguous(error) and selector is not None:
            raise errors.ambiguous(selector.describe(), error) from None
        raise errors.op_failed(error) from None


async def _element_timeout(page: Page, op: AnyOp, selector: Selector, run: OpRun) -> ExecutorError:
    """Why an op on an element ran out of time: nothing matched, or it matched and stayed
    unusable (hidden, disabled, covered...)."""
    what = selector.describe()
    waited = f"within {run.timeout_s:g}s"
    try:
        count = await locate(page, selector).count()
    except PlaywrightError:
        count = 0
    details: dict[str, Any] = {"selector": what, "timeout_s": run.timeout_s}
    if count == 0:
        return ExecutorError(
            errors.ELEMENT_NOT_FOUND,
            f"no element matched {what} {waited} (step {run.index}, {op.op})",
            retryable=True,
            details=details,
        )
    return ExecutorError(
        errors.ELEMENT_NOT_ACTIONABLE,
        f"{what} matched {count} element(s), but {op.op} could not act on it {waited} "
        "(hidden, disabled, covered or not editable)",
        retryable=True,
        details={**details, "matched": count},
    )


async def _goto(page: Page, op: Goto, run: OpRun) -> None:
    try:
        response = await page.goto(op.url, timeout=run.timeout_ms, wait_until=op.wait_until)
    except PlaywrightTimeoutError:
        raise ExecutorError(
            errors.NAVIGATION_FAILED,
            f"{op.url} did not load within {run.timeout_s:g}s",
            retryable=True,
            details={"target": op.url},
        ) from None
    except PlaywrightError as error:
        if errors.is_closed(error):
            raise errors.closed(error) from None
        attachment = "Download is starting" in error.message
        cause = (
            "it is a download; use the download op with url"
            if attachment
            else first_line(error).removeprefix("Page.goto: ")
        )
        raise ExecutorError(
            errors.NAVIGATION_FAILED,
            f"could not open {op.url}: {cause}",
            retryable=not attachment,
            details={"target": op.url},
        ) from None
    if response is not None and response.status >= 400:
        status = response.status
        raise ExecutorError(
            errors.NAVIGATION_FAILED,
            f"{op.url} answered HTTP {status}",
            # A server error or a throttle may pass; a missing or forbidden page stays so.
            retryable=status >= 500 or status == 429,
            details={"target": op.url, "status": status},
        )


async def _click(page: Page, op: Click, run: OpRun) -> None:
    await locate(page, op.selector).click(timeout=run.timeout_ms)


async def _fill(page: Page, op: Fill, run: OpRun) -> None:
    value = op.value if op.secret is None else await run.secret(op.secret)
    assert value is not None  # the model requires value or secret
    await locate(page, op.selector).fill(value, timeout=run.timeout_ms)


async def _type(page: Page, op: Type, run: OpRun) -> None:
    text = op.text if op.secret is None else await run.secret(op.secret)
    assert text is not None  # the model requires text or secret
    await locate(page, op.selector).press_sequentially(
        text, delay=op.delay_ms, timeout=run.timeout_ms
    )


async def _press(page: Page, op: Press, run: OpRun) -> None:
    try:
        if op.selector is None:
            await page.keyboard.press(op.key)
        else:
            await locate(page, op.selector).press(op.key, timeout=run.timeout_ms)
    except PlaywrightError as error:
        if "Unknown key" not in error.message:
            raise
        field = f"{run.path}.key"
        raise ExecutorError(
            INVALID_PARAMS,
            f"{field}: unknown key {op.key!r} (names like Enter, Tab, Control+A)",
            retryable=False,
            details={"field": field},
        ) from None


async def _select(page: Page, op: Select, run: OpRun) -> None:
    await locate(page, op.selector).select_option(op.value, timeout=run.timeout_ms)


async def _wait_for(page: Page, op: WaitFor, run: OpRun) -> None:
    # "Is there one?": several matches are fine here (the first is waited for).
    locator = locate(page, op.selector).first
    try:
        await locator.wait_for(state=op.state, timeout=run.timeout_ms)
    except PlaywrightTimeoutError:
        if op.state in ("attached", "visible"):
            raise
        raise ExecutorError(
            errors.ELEMENT_STILL_PRESENT,
            f"{op.selector.describe()} was still {'visible' if op.state == 'hidden' else 'there'} "
            f"after {run.timeout_s:g}s",
            retryable=True,
            details={"selector": op.selector.describe(), "timeout_s": run.timeout_s},
        ) from None


async def _extract_text(page: Page, op: ExtractText, run: OpRun) -> None:
    text = await locate(page, op.selector).inner_text(timeout=run.timeout_ms)
    run.texts[op.as_] = run.scrubber.scrub(text[: run.settings.max_text_chars])


async def _screenshot(page: Page, op: Screenshot, run: OpRun) -> None:
    name = step_name(run.index, op.name or "screenshot")
    await run.evidence.screenshot(page, name, timeout_s=run.timeout_s, full_page=op.full_page)


async def _download(page: Page, op: Download, run: OpRun) -> None:
    triggered = False
    try:
        async with page.expect_download(timeout=run.timeout_ms) as started:
            await _start_download(page, op, run)
            triggered = True
        download = await started.value
    except PlaywrightTimeoutError:
        if not triggered:
            raise  # the click's own timeout: the element is missing or unusable
        trigger = op.url if op.selector is None else f"clicking {op.selector.describe()}"
        raise ExecutorError(
            errors.DOWNLOAD_FAILED,
            f"{trigger} started no download within {run.timeout_s:g}s",
            retryable=True,
        ) from None
    try:
        data = await _downloaded_bytes(download, run)
    finally:
        await download.delete()
    filename = download.suggested_filename
    media_type = media_type_of(data, filename)
    await run.evidence.save(op.artifact, media_type, data)
    run.downloads[op.artifact] = {
        "filename": run.scrubber.scrub(filename[:255]),
        "media_type": media_type,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


async def _start_download(page: Page, op: Download, run: OpRun) -> None:
    if op.selector is not None:
        await locate(page, op.selector).click(timeout=run.timeout_ms)
        return
    assert op.url is not None  # the model requires selector or url
    try:
        await page.goto(op.url, timeout=run.timeout_ms)
    except PlaywrightError as error:
        # Chromium turns a navigation to an attachment into a download and Playwright reports
        # the navigation as failed; anything else is a real failure.
        if "Download is starting" not in error.message:
            raise ExecutorError(
                errors.NAVIGATION_FAILED,
                f"could not open {op.url}: {first_line(error)}",
                retryable=True,
                details={"target": op.url},
            ) from None


async def _downloaded_bytes(download: PlaywrightDownload, run: OpRun) -> bytes:
    try:
        failure = await asyncio.wait_for(download.failure(), run.timeout_s)
    except TimeoutError:
        failure = f"not finished within {run.timeout_s:g}s"
    if failure is not None:
        raise ExecutorError(
            errors.DOWNLOAD_FAILED,
            f"the download of {download.suggested_filename[:255]!r} failed: {failure}",
            retryable=True,
        )
    path = Path(await download.path())
    size = os.stat(path).st_size
    limit = run.settings.max_download_bytes
    if size > limit:
        raise ExecutorError(
            errors.DOWNLOAD_TOO_LARGE,
            f"the download is {size} bytes; this agent keeps at most {limit} "
            "(CPA_BROWSER_MAX_DOWNLOAD_BYTES)",
            retryable=False,
            details={"size_bytes": size, "limit_bytes": limit},
        )
    return await asyncio.to_thread(path.read_bytes)


def media_type_of(data: bytes, filename: str) -> str:
    """The type the content announces (PDF, PNG...), else the one of the file name's extension,
    else application/octet-stream."""
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"


async def _verify(page: Page, op: Verify, run: OpRun) -> None:
    what = op.selector.describe()
    locator = locate(page, op.selector)
    if op.text is None:
        present = op.exists is not False
        try:
            await locator.first.wait_for(
                state="attached" if present else "detached", timeout=run.timeout_ms
            )
        except PlaywrightTimeoutError:
            expected = "to exist; none appeared" if present else "to be absent; it stayed"
            raise ExecutorError(
                errors.VERIFY_FAILED,
                f"expected {what} {expected} within {run.timeout_s:g}s",
                retryable=False,
                details={"selector": what, "expected": "exists" if present else "absent"},
            ) from None
        return
    try:
        await expect(locator).to_contain_text(op.text, timeout=run.timeout_ms)
    except AssertionError:
        actual = await _text_excerpt(locator)
        shown = "no element matched" if actual is None else f"its text is {actual!r}"
        raise ExecutorError(
            errors.VERIFY_FAILED,
            f"expected {what} to contain {op.text[:_TEXT_EXCERPT_CHARS]!r}; {shown} "
            f"(after {run.timeout_s:g}s)",
            retryable=False,
            details={"selector": what, "expected_text": op.text[:_TEXT_EXCERPT_CHARS]},
        ) from None


async def _text_excerpt(locator: Locator) -> str | None:
    try:
        if await locator.count() == 0:
            return None
        text = await locator.first.inner_text(timeout=1000)
    except PlaywrightError:
        return None
    return " ".join(text.split())[:_TEXT_EXCERPT_CHARS]


_DISPATCH: dict[type, Any] = {
    Goto: _goto,
    Click: _click,
    Fill: _fill,
    Type: _type,
    Press: _press,
    Select: _select,
    WaitFor: _wait_for,
    ExtractText: _extract_text,
    Screenshot: _screenshot,
    Download: _download,
    Verify: _verify,
}
