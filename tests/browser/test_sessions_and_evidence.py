"""The browser executor against real Chromium and the loopback portal: sessions that keep a
login across tasks, evidence of every op, failures that say what went wrong, cancels and crashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cpa_agent.executors.base import ExecutorError
from tests.fixtures.browser_portal import PASSWORD, Portal

from .conftest import Browser, login_steps

LOGIN_SHOTS = ["01-goto.png", "02-fill.png", "03-fill.png", "04-click.png", "05-verify.png"]


async def test_login_then_download_in_two_tasks_share_the_session(
    browser: Browser, portal: Portal
) -> None:
    outputs, login = await browser.run(params=login_steps(portal))
    assert outputs["url"] == portal.url("/invoices")
    assert outputs["artifacts"] == LOGIN_SHOTS
    assert login.names == sorted(LOGIN_SHOTS)
    for name in LOGIN_SHOTS:
        info, png = login.artifacts.saved[name]
        assert info.media_type == "image/png"
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert [m.split(":")[0] for m in login.progress] == [f"step {i}/5" for i in range(1, 6)]

    # The second task of the session starts where the first left off, logged in.
    outputs, download = await browser.run(
        params={
            "op": "download",
            "selector": {"test_id": "invoice-2024-05"},
            "artifact": "invoice",
        }
    )
    info, pdf = download.artifacts.saved["invoice"]
    assert pdf == portal.pdfs["2024-05"]
    assert info.media_type == "application/pdf"
    assert info.sha256 == portal.sha256("2024-05")
    assert outputs["artifacts"] == ["invoice", "01-download.png"]
    assert outputs["downloads"] == {
        "invoice": {
            "filename": "invoice-2024-05.pdf",
            "media_type": "application/pdf",
            "size_bytes": len(pdf),
            "sha256": hashlib.sha256(pdf).hexdigest(),
        }
    }
    # The portal served the PDF to a request that carried the login's cookie.
    assert portal.served("/invoices/2024-05.pdf") == [True]
    assert browser.pool.sessions() == [("job-1", "browser")]


async def test_sessions_and_jobs_are_isolated(browser: Browser, portal: Portal) -> None:
    await browser.run(params=login_steps(portal))
    # Another session of the same job, and the same session name in another job: no cookie.
    for job_id, session in (("job-1", "other"), ("job-2", "browser")):
        outputs, _ = await browser.run(
            params={"op": "goto", "url": portal.url("/invoices")}, job_id=job_id, session=session
        )
        assert outputs["url"] == portal.url("/login")
    assert portal.served("/invoices") == [True, False, False]


async def test_a_task_without_session_gets_a_context_of_its_own(
    browser: Browser, portal: Portal
) -> None:
    await browser.run(params=login_steps(portal), session="")
    outputs, _ = await browser.run(
        params={"op": "goto", "url": portal.url("/invoices")}, session=""
    )
    assert outputs["url"] == portal.url("/login")
    assert browser.pool.sessions() == []


async def test_wrong_password_fails_verify_not_retryable_with_screenshot(
    browser: Browser, portal: Portal
) -> None:
    with pytest.raises(ExecutorError) as caught:
        await browser.run(
            params=login_steps(portal, verify_timeout_s=2),
            secrets={"env:PORTAL_PASSWORD": "wrong"},
        )
    error = caught.value
    assert error.code == "VERIFY_FAILED"
    assert not error.retryable
    assert "css '#welcome'" in error.message
    assert error.details["op_index"] == 5
    assert error.details["url"] == portal.url("/login")
    assert error.details["screenshot"] == "05-verify-error.png"
    assert "Invalid user name or password" in error.details["dom_excerpt"]
    assert error.details["artifacts"] == [*LOGIN_SHOTS[:4], "05-verify-error.png", "error-dom.html"]


async def test_verify_text_mismatch_says_what_the_page_shows(
    browser: Browser, portal: Portal
) -> None:
    await browser.run(params={"op": "goto", "url": portal.url("/selectors")})
    with pytest.raises(ExecutorError) as caught:
        await browser.run(
            params={"op": "verify", "selector": {"css": "#by-css"}, "text": "something else"}
        )
    assert caught.value.code == "VERIFY_FAILED"
    assert not caught.value.retryable
    assert "its text is 'found by css'" in caught.value.message


async def test_a_selector_that_never_appears_times_out_with_screenshot_and_url(
    browser: Browser, portal: Portal
) -> None:
    with pytest.raises(ExecutorError) as caught:
        await browser.run(
            params={
                "steps": [
                    {"op": "goto", "url": portal.url("/selectors")},
                    {"op": "wait_for", "selector": {"css": "#never"}, "timeout_s": 0.5},
                ]
            }
        )
    error = caught.value
    assert error.code == "ELEMENT_NOT_FOUND"
    assert error.retryable
    assert error.message == (
        "no element matched css '#never' within 0.5s (step 2, wait_for) (page "
        f"{portal.url('/selectors')}; evidence 02-wait_for-error.png, error-dom.html)"
    )
    assert error.details["url"] == portal.url("/selectors")
    assert error.details["selector"] == "css '#never'"
    assert error.details["screenshot"] == "02-wait_for-error.png"
    assert error.details["dom_excerpt"].startswith("<!DOCTYPE html><html><head><title>Selectors")
    assert error.details["artifacts"] == [
        "01-goto.png",
        "02-wait_for-error.png",
        "error-dom.html",
    ]


async def test_the_task_deadline_cuts_the_op_timeout_and_leaves_time_for_evidence(
    browser: Browser, portal: Portal
) -> None:
    await browser.run(params={"op": "goto", "url": portal.url("/selectors")})
    deadline = datetime.now(UTC) + timedelta(seconds=2)
    with pytest.raises(ExecutorError) as caught:
        # The op asks for 60 s; the task has 2.
        await browser.run(
            params={"op": "click", "selector": {"css": "#never"}, "timeout_s": 60},
            deadline=deadline,
        )
    assert caught.value.code == "ELEMENT_NOT_FOUND"
    assert caught.value.details["screenshot"] == "01-click-error.png"
    assert datetime.now(UTC) < deadline
    assert caught.value.details["timeout_s"] <= 2


async def test_close_session_closes_its_context(browser: Browser, portal: Portal) -> None:
    await browser.run(params=login_steps(portal))
    held = browser.pool.get("job-1", "browser")
    assert held is not None
    context = held.context
    closed = asyncio.Event()
    context.on("close", lambda _: closed.set())

    # Any of the four executors may be told; the pool is shared, so one close is enough.
    await browser.executors["click"].close_session("job-1", "browser")
    await asyncio.wait_for(closed.wait(), 5)
    assert browser.pool.sessions() == []
    await browser.executors["playwright"].close_session("job-1", "browser")  # nothing left

    # The next task of that session name starts afresh: no cookie.
    outputs, _ = await browser.run(params={"op": "goto", "url": portal.url("/invoices")})
    assert outputs["url"] == portal.url("/login")


async def test_a_cancel_closes_the_page_and_keeps_the_login(
    browser: Browser, portal: Portal
) -> None:
    await browser.run(params=login_steps(portal))
    held = browser.pool.get("job-1", "browser")
    assert held is not None
    old_page = await held.page()

    waiting = asyncio.Event()
    executor, ctx, outcome = browser.context(
        params={
            "steps": [
                {"op": "goto", "url": portal.url("/selectors")},
                {"op": "click", "selector": {"css": "#later"}, "timeout_s": 60},
            ]
        }
    )

    async def announced(percent: float | None, message: str) -> None:
        if message.startswith("step 2/2"):
            waiting.set()

    task = asyncio.create_task(executor.run(replace(ctx, on_progress=announced)))
    await asyncio.wait_for(waiting.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The pending click died with the page; the context (the login) is kept.
    assert old_page.is_closed()
    assert browser.pool.get("job-1", "browser") is held
    assert not held.closed
    outputs, _ = await browser.run(params={"op": "goto", "url": portal.url("/invoices")})
    assert outputs["url"] == portal.url("/invoices")
    assert outcome.names == ["01-goto.png"]


def _chromium_processes() -> list[int]:
    """Chromium's browser processes below this test process (its renderers excluded)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            is_chromium = Path(cmdline[0].decode()).name == "chromium"
            if is_chromium and not any(a.startswith(b"--type=") for a in cmdline):
                found.append(child)
    return found


async def test_a_crashed_browser_is_relaunched_by_the_next_task(
    browser: Browser, portal: Portal
) -> None:
    await browser.run(params=login_steps(portal))
    assert browser.pool.launches == 1
    browser_process = browser.pool.browser
    assert browser_process is not None
    gone = asyncio.Event()
    browser_process.on("disconnected", lambda _: gone.set())
    pids = _chromium_processes()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    await asyncio.wait_for(gone.wait(), 10)

    # The session died with the browser: the next task runs in a new browser, logged out.
    outputs, _ = await browser.run(params={"op": "goto", "url": portal.url("/invoices")})
    assert outputs["url"] == portal.url("/login")
    assert browser.pool.launches == 2
    await browser.run(params=login_steps(portal))


async def test_no_secret_leaves_the_agent(browser: Browser, portal: Portal) -> None:
    # A page that echoes what it was given, and a failure on it.
    steps = {
        "steps": [
            {"op": "goto", "url": portal.url("/selectors")},
            {"op": "fill", "selector": {"css": "#name"}, "secret": "portal_password"},
            {"op": "extract_text", "selector": {"css": "#typed"}, "as": "echo"},
            {"op": "goto", "url": portal.url("/echo?q=x")},
            {"op": "fill", "selector": {"css": "#said"}, "secret": "portal_password"},
        ]
    }
    executor, ctx, outcome = browser.context(params=steps)
    with pytest.raises(ExecutorError) as caught:
        await executor.run(ctx)
    assert caught.value.code == "OP_FAILED", caught.value
    seen = [caught.value.message, repr(caught.value.details), *outcome.progress, *outcome.names]
    assert not any(PASSWORD in text for text in seen)
    # The typed text did reach the page (the op ran), and came back masked.
    outputs, _ = await browser.run(
        params={
            "steps": [
                {"op": "goto", "url": portal.url("/selectors")},
                {"op": "fill", "selector": {"css": "#name"}, "secret": "portal_password"},
                {"op": "extract_text", "selector": {"css": "#typed"}, "as": "echo"},
                {"op": "goto", "url": portal.url("/echo?q=") + PASSWORD},
            ]
        }
    )
    assert outputs["texts"] == {"echo": "***"}
    assert PASSWORD not in repr(outputs)
    assert PASSWORD.encode() not in outcome.data("error-dom.html")
