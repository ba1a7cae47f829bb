"""The browser executor through a real scheduler and agent over gRPC: a login task and a
download task of one job share the browser session on the agent (the cookie survives), every
step's screenshot is an artifact of its task, the secret never leaves the agent, and the session
closes when the job ends. Real Chromium, the loopback portal."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from google.protobuf import duration_pb2, json_format

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import job_pb2 as S  # noqa: N812 - short alias for enum-heavy asserts
from cpa_agent import ExecutorRegistry, builtin_registry
from cpa_agent.executors.browser import PlaywrightExecutor, UiActionExecutor, browser_executors
from cpa_client import SchedulerClient
from tests.browser.conftest import chromium_settings, login_steps
from tests.fixtures.browser_portal import PASSWORD, Portal, running_portal

from .conftest import Agents, collect_events, finished, todo, todos_spec

PASSWORD_ENV = "CPA_TEST_PORTAL_PASSWORD"
REFS = {"portal_password": f"env:{PASSWORD_ENV}"}


@pytest.fixture
def portal() -> Iterator[Portal]:
    with running_portal() as running:
        yield running


@pytest.fixture
async def browser_agent(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[PlaywrightExecutor | UiActionExecutor]]:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    executors = browser_executors(chromium_settings(op_timeout_s=10.0))
    registry: ExecutorRegistry = builtin_registry()
    for executor in executors:
        registry.register(executor)
    await agents.start("browser-agent", registry=registry)
    try:
        yield executors
    finally:
        await executors[0].aclose()


def _timeout(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


async def test_login_and_download_share_the_session_through_the_scheduler(
    client: SchedulerClient,
    portal: Portal,
    browser_agent: list[PlaywrightExecutor | UiActionExecutor],
) -> None:
    response = await client.schedule_job(
        todos_spec(
            todo(
                "login",
                "playwright",
                params=login_steps(portal),
                credential_refs=REFS,
                timeout=_timeout(60),
            ),
            todo(
                "download",
                "playwright",
                depends_on=["login"],
                params={
                    "op": "download",
                    "selector": {"test_id": "invoice-2024-05"},
                    "artifact": "invoice",
                },
                timeout=_timeout(60),
            ),
        )
    )
    events = await collect_events(client, response.job.job_id)
    job = await finished(client, response.job.job_id)
    assert job.state == S.JOB_STATE_SUCCEEDED, job
    tasks = {task.todo.id: task for task in job.tasks}
    outputs = json_format.MessageToDict(tasks["download"].outputs)
    assert outputs["downloads"]["invoice"]["sha256"] == portal.sha256("2024-05")
    assert outputs["artifacts"] == ["invoice", "01-download.png"]
    login = json_format.MessageToDict(tasks["login"].outputs)
    assert login["url"] == portal.url("/invoices")
    # The download carried the login's cookie: one browser context for the two tasks.
    # (Twice if a loaded machine lost an attempt and the session ran again: each time logged in.)
    served = portal.served("/invoices/2024-05.pdf")
    assert served
    assert all(served)
    # Every step's screenshot is an artifact of its task, listed by the scheduler.
    names = {
        task_id: sorted(a.name for a in task.artifacts if a.attempt == len(task.attempts))
        for task_id, task in tasks.items()
    }
    assert names == {
        "login": ["01-goto.png", "02-fill.png", "03-fill.png", "04-click.png", "05-verify.png"],
        "download": ["01-download.png", "invoice"],
    }, [(t.todo.id, [(a.attempt, a.name) for a in t.artifacts], t.attempts) for t in job.tasks]
    # The audit entry of the login's outcome names its screenshots, in the order taken.
    login_attempt = len(tasks["login"].attempts)
    [outcome] = [
        e
        async for e in client.list_audit_entries(job_id=job.job_id, action="TaskResult")
        if e.task_id == "login" and e.attempt == login_attempt
    ]
    shots = {a.artifact_id: a.name for a in tasks["login"].artifacts}
    assert [shots[i] for i in outcome.artifact_ids] == names["login"]
    assert (outcome.task_action, outcome.result_code) == ("playwright", "OK")
    # The password never reached the scheduler.
    assert PASSWORD not in str(job)
    assert not any(PASSWORD in str(event) for event in events)

    # The session ends with the job: the agent closes its context.
    held = browser_agent[0].pool.get(response.job.job_id, "browser")
    if held is not None:  # not closed yet: wait for its context's close event
        closed = asyncio.Event()
        held.context.on("close", lambda _: closed.set())
        if not held.closed:
            await asyncio.wait_for(closed.wait(), 10)
    assert browser_agent[0].pool.sessions() == []


async def test_a_wrong_password_fails_the_login_for_good_and_skips_the_download(
    client: SchedulerClient,
    portal: Portal,
    browser_agent: list[PlaywrightExecutor | UiActionExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    response = await client.schedule_job(
        todos_spec(
            todo(
                "login",
                "playwright",
                params=login_steps(portal, verify_timeout_s=2),
                credential_refs=REFS,
            ),
            todo(
                "download",
                "playwright",
                depends_on=["login"],
                params={"op": "download", "selector": {"test_id": "x"}, "artifact": "invoice"},
            ),
        )
    )
    job = await finished(client, response.job.job_id)
    assert job.state == S.JOB_STATE_FAILED
    tasks = {task.todo.id: task for task in job.tasks}
    assert tasks["download"].state == S.TASK_STATE_SKIPPED
    error = tasks["login"].error
    assert error.code == "VERIFY_FAILED"
    assert not error.retryable
    # Not tried again after VERIFY_FAILED. (An attempt before it may have been LOST: the e2e
    # lease is 1.5 s, which a loaded machine can miss; the session then restarts elsewhere.)
    attempts = tasks["login"].attempts
    assert attempts[-1].state == S.ATTEMPT_STATE_FAILED
    assert [a.state for a in attempts[:-1]] == [S.ATTEMPT_STATE_LOST] * (len(attempts) - 1)
    # The scheduler keeps the message: it says where the page was and what evidence was stored.
    assert f"(page {portal.url('/login')}; evidence 05-verify-error.png, error-dom.html)" in (
        error.message
    )
    stored = {a.name for a in tasks["login"].artifacts}
    assert {"04-click.png", "05-verify-error.png", "error-dom.html"} <= stored


async def test_the_ui_click_action_runs_on_todo_selector(
    client: SchedulerClient,
    portal: Portal,
    browser_agent: list[PlaywrightExecutor | UiActionExecutor],
) -> None:
    response = await client.schedule_job(
        todos_spec(
            todo("open", "playwright", params={"op": "goto", "url": portal.url("/selectors")}),
            todo(
                "reveal",
                "click",
                depends_on=["open"],
                selector=todo_pb2.Selector(
                    strategy=todo_pb2.SELECTOR_STRATEGY_ROLE, value="button[name=Reveal]"
                ),
            ),
            todo(
                "check",
                "playwright",
                depends_on=["reveal"],
                params={"op": "verify", "selector": {"test_id": "total"}, "text": "1 234,56"},
            ),
        )
    )
    job = await finished(client, response.job.job_id)
    assert job.state == S.JOB_STATE_SUCCEEDED, job


def _chromium_pids() -> set[int]:
    """The Chromium processes descended from this process (Playwright's driver starts them)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split at the last.
        head, _, rest = stat.rpartition(")")
        names[int(entry.name)] = head.partition("(")[2]
        parents[int(entry.name)] = int(rest.split()[1])
    me = os.getpid()

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return {pid for pid, name in names.items() if "chrom" in name.lower() and descends(pid)}


async def test_a_stopped_agent_closes_chromium(
    client: SchedulerClient, portal: Portal, agents: Agents
) -> None:
    executors = browser_executors(chromium_settings(op_timeout_s=10.0))
    registry: ExecutorRegistry = builtin_registry()
    for executor in executors:
        registry.register(executor)
    before = _chromium_pids()
    agent = await agents.start("closing-agent", registry=registry)
    response = await client.schedule_job(
        todos_spec(todo("open", "playwright", params={"op": "goto", "url": portal.url("/login")}))
    )
    job = await finished(client, response.job.job_id)
    assert job.state == S.JOB_STATE_SUCCEEDED, job
    launched = _chromium_pids() - before
    assert launched, "the agent's Chromium is not a descendant of this process"

    agent.request_drain("test over")
    (run,) = [task for running, task in agents.running if running is agent]
    await asyncio.wait_for(run, 30)

    # The agent closed its executors: the browser pool is shut and Chromium has exited (the
    # driver waits for it), without the test's process ending.
    assert executors[0].pool.sessions() == []
    assert not (_chromium_pids() & launched)
