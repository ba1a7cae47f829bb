"""`cpa top`: a live view of a scheduler from its API (rich): jobs by state, tasks waiting QUEUED
per requirement, agents with their free slots, and the latest failures.

Every refresh is a handful of list calls, each bounded: at most SCAN_LIMIT jobs per state are
counted (more shows as "500+"), queue depth comes from the active jobs among them (BASIC view:
no params or outputs), failures are the newest few. So `cpa top` costs the scheduler the same
on a busy deployment as on an idle one; exact counts are the metrics' (docs/OBSERVABILITY.md).
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient

from .common import CliError, add_server_option
from .jobs_command import client_command
from .output import action_name

SCAN_LIMIT = 500
FAILURES = 5
_ACTIVE = ("PENDING", "RUNNING", "WAITING_APPROVAL")
_ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "top",
        help="live view: jobs by state, queue depth, agents, failures",
        description="A live view of the scheduler, refreshed every --interval seconds: jobs by "
        f"state (up to {SCAN_LIMIT} counted per state), tasks QUEUED per requirement (action), "
        "agents with their free slots, and the latest failed jobs. Ctrl-C ends it.",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument(
        "--once", action="store_true", help="print one snapshot and exit (no live screen)"
    )
    add_server_option(parser)
    parser.set_defaults(run=client_command(_top))


@dataclass
class Snapshot:
    """What one refresh read."""

    jobs: dict[str, int] = field(default_factory=dict)
    queued: Counter[str] = field(default_factory=Counter)
    agents: list[tuple[str, str, int, int, str]] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)


async def _count(client: SchedulerClient, state: str, snapshot: Snapshot) -> None:
    count = 0
    async for job in client.list_jobs(
        filter=f"state = {state}", page_size=SCAN_LIMIT, view=job_pb2.JOB_VIEW_BASIC
    ):
        count += 1
        if state in _ACTIVE:
            snapshot.queued.update(
                action_name(task.todo)
                for task in job.tasks
                if task.state == job_pb2.TASK_STATE_QUEUED
            )
        if count >= SCAN_LIMIT:
            break
    snapshot.jobs[state] = count


async def read(client: SchedulerClient) -> Snapshot:
    """One refresh: the lists, side by side."""
    snapshot = Snapshot()
    await asyncio.gather(*(_count(client, state, snapshot) for state in (*_ACTIVE, *_ENDED)))
    async for agent in client.list_agents():
        slots = agent.capabilities
        snapshot.agents.append(
            (agent.agent_id, agent.name, agent.free_credits, slots.slots, ",".join(slots.actions))
        )
    async for job in client.list_jobs(
        filter="state = FAILED", page_size=FAILURES, view=job_pb2.JOB_VIEW_BASIC
    ):
        snapshot.failures.append((job.job_id, job.error.code or "-", job.error.message[:80]))
        if len(snapshot.failures) >= FAILURES:
            break
    return snapshot


def render(snapshot: Snapshot, server: str) -> Group:
    """The screen of one snapshot."""
    jobs = Table(title=f"jobs on {server}")
    for state in (*_ACTIVE, *_ENDED):
        jobs.add_column(state, justify="right")
    jobs.add_row(
        *(
            f"{count}+" if count >= SCAN_LIMIT else str(count)
            for count in (snapshot.jobs.get(s, 0) for s in (*_ACTIVE, *_ENDED))
        )
    )
    queue = Table(title="queued tasks by requirement")
    queue.add_column("REQUIREMENT")
    queue.add_column("QUEUED", justify="right")
    queue.add_column("AGENTS SERVING", justify="right")
    for action, count in snapshot.queued.most_common():
        serving = sum(action in actions.split(",") for *_, actions in snapshot.agents)
        queue.add_row(action, str(count), str(serving))
    agents = Table(title="agents")
    for column in ("AGENT", "NAME", "FREE", "ACTIONS"):
        agents.add_column(column)
    for agent_id, name, free, slots, actions in snapshot.agents:
        agents.add_row(agent_id, name or "-", f"{free}/{slots}", actions or "-")
    failures = Table(title="latest failures")
    for column in ("JOB", "CODE", "MESSAGE"):
        failures.add_column(column)
    for row in snapshot.failures:
        failures.add_row(*row)
    return Group(jobs, queue, agents, failures)


async def _top(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    if not arguments.interval > 0:
        raise CliError("top: --interval must be > 0")
    console = Console()
    if arguments.once:
        console.print(render(await read(client), arguments.server))
        return 0
    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(render(await read(client), arguments.server), refresh=True)
            await asyncio.sleep(arguments.interval)
