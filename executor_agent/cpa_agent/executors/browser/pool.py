"""One Chromium per agent, launched on first use, and one browser context per session.

A session is (job id, ToDo.session): its context holds the cookies and storage of a login, and
its page stays where the last task left it, so the next task of the session goes on from there.
Tasks of one session run one at a time (a lock per session); tasks of different sessions run
side by side, as many as the agent has slots. A task with no session gets a context of its own,
closed when it ends. When Chromium dies, every context dies with it: the sessions are dropped and
the next task launches a new browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError

from cpa_agent.executors.base import ExecutorError
from cpa_agent.executors.browser.errors import (
    BROWSER_BUSY,
    BROWSER_UNAVAILABLE,
    first_line,
)
from cpa_agent.executors.browser.settings import BrowserSettings

logger = logging.getLogger(__name__)

SessionKey = tuple[str, str]
"""(job id, session key)"""

_CLOSE_TIMEOUT_S = 10.0


class BrowserSession:
    """A browser context and its page, used by one task at a time."""

    def __init__(self, key: SessionKey, context: BrowserContext, generation: int) -> None:
        self.key = key
        self.context = context
        self.generation = generation
        """The launch of the browser the context belongs to."""
        self.lock = asyncio.Lock()
        self.users = 0
        """Tasks holding or waiting for the session: a session in use is never evicted."""
        self.last_used = time.monotonic()
        self.closed = False
        self._page: Page | None = None

    async def page(self) -> Page:
        """The session's page; a new blank one when there is none (first task, or the last one
        was closed)."""
        if self._page is None or self._page.is_closed():
            self._page = await self.context.new_page()
        return self._page

    async def discard_page(self) -> None:
        """Closes the page, which ends every Playwright call still pending on it (a stopped
        task's click must not land in the next task), and keeps the context and its cookies."""
        page, self._page = self._page, None
        if page is not None and not page.is_closed():
            with contextlib.suppress(PlaywrightError, TimeoutError):
                await asyncio.wait_for(page.close(), _CLOSE_TIMEOUT_S)

    async def close(self) -> None:
        self.closed = True
        self._page = None
        with contextlib.suppress(PlaywrightError, TimeoutError):
            await asyncio.wait_for(self.context.close(), _CLOSE_TIMEOUT_S)


class BrowserPool:
    """The agent's browser and its sessions; shared by the browser executors of one agent."""

    def __init__(self, settings: BrowserSettings) -> None:
        self._settings = settings
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        """Guards launching and the session table (both quick next to the ops)."""
        self._sessions: dict[SessionKey, BrowserSession] = {}
        self._closed = False

    @property
    def launches(self) -> int:
        """How many times Chromium was launched (1 while it never died)."""
        return self._generation

    @property
    def browser(self) -> Browser | None:
        return self._browser

    def sessions(self) -> list[SessionKey]:
        """Keys of the open sessions (a snapshot)."""
        return list(self._sessions)

    def get(self, job_id: str, session: str) -> BrowserSession | None:
        return self._sessions.get((job_id, session))

    @contextlib.asynccontextmanager
    async def session(self, job_id: str, session: str) -> AsyncIterator[BrowserSession]:
        """Holds the session (job_id, session), created on first use, for one task; with an
        empty `session`, a context of the task's own, closed when it ends."""
        if not session:
            async with self._lock:
                browser = await self._ensure_browser()
                one_off = BrowserSession((job_id, ""), await _new_context(browser), 0)
            try:
                yield one_off
            finally:
                await one_off.close()
            return
        key = (job_id, session)
        while True:
            async with self._lock:
                entry = await self._get_or_create(key)
                entry.users += 1
            try:
                async with entry.lock:
                    # Closed (close_session, a crash) while this task waited: take a new one.
                    if entry.closed or entry.generation != self._generation:
                        continue
                    entry.last_used = time.monotonic()
                    try:
                        yield entry
                    finally:
                        entry.last_used = time.monotonic()
                    return
            finally:
                entry.users -= 1

    async def close_session(self, job_id: str, session: str) -> bool:
        """Closes the session's context; False when there was none (already closed)."""
        entry = self._sessions.pop((job_id, session), None)
        if entry is None:
            return False
        logger.info("closing browser session %s/%s", job_id, session)
        await entry.close()
        return True

    async def aclose(self) -> None:
        """Closes every session, the browser and Playwright's driver; the pool takes no more
        work."""
        async with self._lock:
            self._closed = True
            sessions, self._sessions = list(self._sessions.values()), {}
            for entry in sessions:
                await entry.close()
            browser, self._browser = self._browser, None
            if browser is not None:
                with contextlib.suppress(PlaywrightError, TimeoutError):
                    await asyncio.wait_for(browser.close(), _CLOSE_TIMEOUT_S)
            await self._stop_playwright()

    async def _get_or_create(self, key: SessionKey) -> BrowserSession:
        browser = await self._ensure_browser()
        entry = self._sessions.get(key)
        if entry is not None and entry.generation == self._generation and not entry.closed:
            return entry
        await self._make_room()
        entry = BrowserSession(key, await _new_context(browser), self._generation)
        self._sessions[key] = entry
        logger.info("opened browser session %s/%s", *key)
        return entry

    async def _make_room(self) -> None:
        """Closes sessions idle past session_idle_s, then, at max_sessions, the one unused the
        longest (the scheduler normally closes sessions; this bounds an agent it never tells)."""
        now = time.monotonic()
        idle = [
            e
            for e in self._sessions.values()
            if e.users == 0 and now - e.last_used > self._settings.session_idle_s
        ]
        for entry in idle:
            logger.info("closing browser session %s/%s: idle", *entry.key)
            self._sessions.pop(entry.key, None)
            await entry.close()
        if len(self._sessions) < self._settings.max_sessions:
            return
        unused = [e for e in self._sessions.values() if e.users == 0]
        if not unused:
            raise ExecutorError(
                BROWSER_BUSY,
                f"all {self._settings.max_sessions} browser sessions of this agent are in use "
                "(CPA_BROWSER_MAX_SESSIONS)",
                retryable=True,
            )
        oldest = min(unused, key=lambda e: e.last_used)
        logger.warning(
            "closing browser session %s/%s: %d sessions open (CPA_BROWSER_MAX_SESSIONS)",
            *oldest.key,
            len(self._sessions),
        )
        self._sessions.pop(oldest.key, None)
        await oldest.close()

    async def _ensure_browser(self) -> Browser:
        if self._closed:
            raise ExecutorError(
                BROWSER_UNAVAILABLE, "the agent's browser is shut down", retryable=True
            )
        if self._browser is not None and self._browser.is_connected():
            return self._browser
        if self._sessions:
            # Their contexts died with the browser that held them.
            logger.warning("browser gone: dropping %d sessions", len(self._sessions))
            for entry in self._sessions.values():
                entry.closed = True
            self._sessions.clear()
        try:
            browser = await self._launch()
        except PlaywrightError:
            # The driver may have died with the browser: start it afresh, once.
            await self._stop_playwright()
            try:
                browser = await self._launch()
            except PlaywrightError as error:
                raise ExecutorError(
                    BROWSER_UNAVAILABLE,
                    f"Chromium ({self._settings.executable}) did not start: {first_line(error)}",
                    retryable=True,
                ) from None
        self._generation += 1
        self._browser = browser
        browser.on("disconnected", self._on_disconnected)
        logger.info(
            "launched Chromium %s (%s, launch %d)",
            browser.version,
            self._settings.executable,
            self._generation,
        )
        return browser

    async def _launch(self) -> Browser:
        if self._playwright is None:
            self._playwright = await async_playwright().start()
        return await self._playwright.chromium.launch(
            executable_path=str(self._settings.executable),
            headless=self._settings.headless,
            args=self._settings.launch_args(),
            timeout=self._settings.launch_timeout_s * 1000,
        )

    def _on_disconnected(self, browser: Browser) -> None:
        if browser is self._browser and not self._closed:
            logger.warning("Chromium disconnected; the next browser task relaunches it")
            self._browser = None

    async def _stop_playwright(self) -> None:
        playwright, self._playwright = self._playwright, None
        if playwright is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(playwright.stop(), _CLOSE_TIMEOUT_S)


async def _new_context(browser: Browser) -> BrowserContext:
    try:
        return await browser.new_context(accept_downloads=True)
    except PlaywrightError as error:
        raise ExecutorError(
            BROWSER_UNAVAILABLE, f"no new browser context: {first_line(error)}", retryable=True
        ) from None
