"""The forward_invoice job through a real scheduler and real agent processes: browser agents
(`cpa agent --executors browser`, Chromium) and a mail agent (MSAL against the loopback Graph),
the demo portal over HTTP, the loopback Graph over HTTPS. The demo's own parts are used
(cpa_cli.demo: DemoPortal, LoopbackGraph, AgentProcess, forward_invoice_spec).

- A browser agent SIGKILLed while the PDF is downloading: the session runs again from its login
  on the other agent, and exactly one mail with the portal's PDF is delivered.
- Two browser agents connected: every step of the session runs on one of them.
- A selector that never appears: the step fails with the page's URL in the message, its
  screenshot readable through the API, its details kept (GetJob), dependents SKIPPED.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from google.protobuf import json_format

from cpa.scheduler.v1 import job_event_pb2, job_pb2
from cpa_cli.demo.forward_invoice import forward_invoice_spec
from cpa_cli.demo.graph_server import LoopbackGraph
from cpa_cli.demo.portal import DemoPortal
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings
from tests.fixtures.forward_invoice import JOB_END_S, LEASE_S, Fleet, run_to_end

from .conftest import HEARTBEAT_S, first_event, task_reached

MONTH = "2026-11"
RECIPIENT = "accounting@example.com"
SESSION_TASKS = ("login", "open_invoices", "download")

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("demo_parts")]


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", lease_duration_s=LEASE_S, heartbeat_interval_s=HEARTBEAT_S
    )


def _attempts(job: job_pb2.Job, task_id: str) -> list[tuple[str, str]]:
    (task,) = [task for task in job.tasks if task.todo.id == task_id]
    return [(a.agent_id, job_pb2.AttemptState.Name(a.state)) for a in task.attempts]


def _first_running(events: list[job_event_pb2.JobEvent], task_id: str, agent_id: str) -> int:
    """The sequence of the first event where `task_id` started RUNNING on `agent_id`."""
    return next(
        e.sequence
        for e in events
        if e.WhichOneof("kind") == "task_state_changed"
        and e.task_state_changed.task_id == task_id
        and e.task_state_changed.to_state == job_pb2.TASK_STATE_RUNNING
        and e.task_state_changed.agent_id == agent_id
    )


async def test_a_browser_agent_killed_mid_download_reruns_the_session_elsewhere_and_mails_once(
    client: SchedulerClient, fleet: Fleet, portal: DemoPortal, graph: LoopbackGraph
) -> None:
    portal.hold_pdfs()
    await fleet.mail()
    await fleet.browser("browser-a")
    await fleet.browser("browser-b")
    spec = forward_invoice_spec(portal, month=MONTH, recipient=RECIPIENT)
    job_id = (await client.schedule_job(spec)).job.job_id

    # The download is under way: Chromium asked for the PDF and waits for its headers.
    await asyncio.wait_for(portal.pdf_requested.wait(), JOB_END_S)
    running = await first_event(
        client, job_id, task_reached("download", job_pb2.TASK_STATE_RUNNING)
    )
    doomed_id = running.task_state_changed.agent_id
    (survivor_id,) = {"browser-a", "browser-b"} - {doomed_id}
    doomed = fleet.agents[doomed_id]
    doomed.process.kill()  # SIGKILL: no drain, no goodbye; the lease must run out
    await doomed.process.wait()
    portal.release_pdfs()

    job, events = await run_to_end(client, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job

    # The kill restarted the whole session, from its login, away from the killed agent.
    restarts = [e.session_restarted for e in events if e.WhichOneof("kind") == "session_restarted"]
    (restart,) = [r for r in restarts if "download" in r.task_ids]
    assert (restart.from_agent, list(restart.task_ids)) == (doomed_id, list(SESSION_TASKS))
    # Every step ran again on the survivor, the login first; the download the kill interrupted
    # was lost (not failed: it counts against redelivery, not retries).
    for task_id in SESSION_TASKS:
        attempts = _attempts(job, task_id)
        assert attempts[-1] == (survivor_id, "ATTEMPT_STATE_SUCCEEDED"), (task_id, attempts)
    for task_id in ("login", "open_invoices"):
        assert (doomed_id, "ATTEMPT_STATE_SUCCEEDED") in _attempts(job, task_id)
    assert (doomed_id, "ATTEMPT_STATE_LOST") in _attempts(job, "download")
    login_again = _first_running(events, "login", survivor_id)
    assert login_again < _first_running(events, "download", survivor_id)
    assert portal.log.logins >= 2

    # Exactly one mail, carrying the bytes the portal served.
    assert len(graph.delivered) == 1, graph.delivered
    (attachment,) = graph.delivered[0].attachments
    assert attachment.sha256 == portal.pdf_sha256(MONTH)
    assert graph.delivered[0].to == (RECIPIENT,)


async def test_with_two_browser_agents_every_step_of_the_session_runs_on_one(
    client: SchedulerClient, fleet: Fleet, portal: DemoPortal, graph: LoopbackGraph
) -> None:
    await fleet.mail()
    await fleet.browser("browser-a")
    await fleet.browser("browser-b")
    spec = forward_invoice_spec(portal, month=MONTH, recipient=RECIPIENT)
    job_id = (await client.schedule_job(spec)).job.job_id

    job, _events = await run_to_end(client, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job

    per_task = {task_id: _attempts(job, task_id) for task_id in SESSION_TASKS}
    final_agents = {attempts[-1][0] for attempts in per_task.values()}
    assert len(final_agents) == 1, per_task
    assert final_agents <= {"browser-a", "browser-b"}
    for attempts in per_task.values():
        assert attempts[-1][1] == "ATTEMPT_STATE_SUCCEEDED"
    if all(len(attempts) == 1 for attempts in per_task.values()):
        # No attempt lost to a loaded machine (1.5 s lease): one login served the download.
        assert portal.log.logins == 1
    assert _attempts(job, "send") == [("mail", "ATTEMPT_STATE_SUCCEEDED")]
    assert len(graph.delivered) == 1


async def test_a_selector_that_never_appears_fails_the_step_with_evidence_and_skips_the_mail(
    client: SchedulerClient, fleet: Fleet, graph: LoopbackGraph, tmp_path: Path
) -> None:
    # A portal that lists another month only: the download link of MONTH never appears.
    async with DemoPortal(months=["2026-10"]) as portal:
        fleet.portal = portal
        await fleet.browser("browser-a", CPA_BROWSER_OP_TIMEOUT_S="2")
        spec = forward_invoice_spec(portal, month=MONTH, recipient=RECIPIENT)
        spec.default_retry_policy.max_attempts = 1
        job_id = (await client.schedule_job(spec)).job.job_id

        job, _events = await run_to_end(client, job_id)

    assert job.state == job_pb2.JOB_STATE_FAILED
    tasks = {task.todo.id: task for task in job.tasks}
    assert tasks["send"].state == job_pb2.TASK_STATE_SKIPPED
    assert not tasks["send"].attempts
    download = tasks["download"]
    assert download.state == job_pb2.TASK_STATE_FAILED
    assert download.error.code == "ELEMENT_NOT_FOUND"
    invoices_url = f"{portal.base_url}/invoices"
    assert f"(page {invoices_url}; evidence " in download.error.message, download.error.message

    # The details the browser reported reach the caller (GetJob): where the page was, which
    # op failed, the evidence stored.
    details = json_format.MessageToDict(download.error.details)
    assert details["url"] == invoices_url, details
    assert details["op"] == "download"
    screenshot = details["screenshot"]
    assert screenshot in download.error.message
    assert "<title>Invoices - " in details["dom_excerpt"]

    # The screenshot is an artifact of the failed attempt, readable through the API.
    (artifact,) = [a for a in download.artifacts if a.name == screenshot]
    assert artifact.media_type == "image/png"
    _meta, data = await client.read_artifact(job_id, artifact.artifact_id)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(graph.delivered) == 0
